//! Users and passwords for SMTP AUTH: the user database (users file and
//! inline users), password-hash verification (argon2id, and sha512-crypt
//! and bcrypt for users migrated from Dovecot passwd files), hashing new
//! passwords, and the per-address failure limiter. Reads only the users
//! file. Passwords are never logged or kept beyond a check.

pub mod directory;
pub mod srs;
pub mod verifier;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{check_user, AuthConfig, UserConfig, UserDelivery};

pub use verifier::{Busy, Verifier};

/// Longest password checked; a longer one fails at once, so no one can
/// make a single check expensive (sha512-crypt's cost grows with length).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// One user who may authenticate.
#[derive(Clone)]
pub struct User {
    pub login: String,
    hash: String,
    /// Addresses the user may send as; `@domain` entries cover a domain.
    pub addresses: Vec<String>,
    /// The user's own delivery target, if the entry gives one.
    pub delivery: Option<UserDelivery>,
    /// The user's own Maildir template, if the entry gives one.
    pub maildir: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("login", &self.login)
            .field("addresses", &self.addresses)
            .finish()
    }
}

impl User {
    /// May this user use `address` as the envelope sender or From: address?
    /// Compared without regard to case.
    pub fn may_send_as(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        self.addresses.iter().any(|a| {
            let a = a.to_lowercase();
            match a.strip_prefix('@') {
                Some(d) => d == domain,
                None => a == address,
            }
        })
    }
}

/// All users, by login.
#[derive(Debug, Default, Clone)]
pub struct UserDb {
    users: HashMap<String, Arc<User>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserConfig>,
}

impl UserDb {
    /// Loads the users file (if configured) and the inline users. Errors
    /// name the file, the key and the line.
    pub fn load(cfg: &AuthConfig) -> Result<UserDb, Vec<String>> {
        let mut errors = Vec::new();
        let mut all: Vec<UserConfig> = cfg.users.clone();
        if !cfg.users_file.as_os_str().is_empty() {
            match load_users_file(&cfg.users_file) {
                Ok(u) => all.extend(u),
                Err(e) => errors.extend(e),
            }
        }
        let mut db = UserDb::default();
        for u in all {
            if db.users.contains_key(&u.login) {
                errors.push(format!("user `{}` is defined twice", u.login));
                continue;
            }
            db.users.insert(
                u.login.clone(),
                Arc::new(User {
                    login: u.login,
                    hash: u.password,
                    addresses: u.addresses,
                    delivery: u.delivery,
                    maildir: u.maildir,
                }),
            );
        }
        if errors.is_empty() {
            Ok(db)
        } else {
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, login: &str) -> Option<Arc<User>> {
        self.users.get(login).cloned()
    }

    /// Every user, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    /// Checks a login and password. Slow by design (argon2): call it off
    /// the async reactor. An unknown login costs the same as a wrong
    /// password, so timing does not tell which logins exist.
    pub fn verify(&self, login: &str, password: &str) -> Option<Arc<User>> {
        if password.len() > MAX_PASSWORD_BYTES {
            return None;
        }
        match self.users.get(login) {
            Some(u) => verify_hash(&u.hash, password).then(|| u.clone()),
            None => {
                let _ = verify_hash(dummy_hash(), password);
                None
            }
        }
    }
}

/// An argon2id hash of a random string, checked against when the login is
/// unknown so that a miss takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no such user").unwrap_or_default())
}

/// Largest users file read.
const MAX_USERS_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn load_users_file(path: &Path) -> Result<Vec<UserConfig>, Vec<String>> {
    let shown = path.display();
    let (file, _): (UsersFile, _) =
        crate::config::read_toml_file(path, "users file", MAX_USERS_FILE_BYTES)
            .map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut users = file.user;
    for (i, u) in users.iter_mut().enumerate() {
        for (key, msg) in check_user(u) {
            errors.push(format!("{shown}: key `user[{i}].{key}`: {msg}"));
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

/// Verifies `password` against a stored hash: `$argon2id$`/`$argon2i$`/
/// `$argon2d$` (PHC string), `$6$` (sha512-crypt) or `$2y$`/`$2b$`/`$2a$`
/// (bcrypt). Unknown or malformed hashes never match.
pub fn verify_hash(hash: &str, password: &str) -> bool {
    if hash.starts_with("$argon2") {
        verify_argon2(hash, password.as_bytes())
    } else if hash.starts_with("$6$") {
        sha_crypt::sha512_check(password, hash).is_ok()
    } else if hash.starts_with("$2") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        false
    }
}

/// Largest argon2 memory cost (KiB) a stored hash may ask for: a hash
/// wanting more never matches, rather than take that memory per check.
const MAX_ARGON2_KIB: u32 = 256 * 1024;

thread_local! {
    /// This thread's argon2 work area, kept from one check to the next: a
    /// check then allocates nothing, and the memory a flood of checks
    /// uses is this area times the number of password-check threads,
    /// never more.
    static ARGON2_BLOCKS: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Verifies a PHC-string argon2 hash (RFC 9106) the way the `argon2`
/// crate's verifier does, with the work area of this thread.
fn verify_argon2(hash: &str, password: &[u8]) -> bool {
    use argon2::password_hash::{Output, PasswordHash};
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_ARGON2_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let mut out = vec![0u8; expected.len()];
    let hasher = argon2::Argon2::new(algorithm, version, params);
    let hashed = ARGON2_BLOCKS.with(|area| {
        let mut area = area.borrow_mut();
        if area.len() < blocks {
            area.resize(blocks, argon2::Block::default());
        }
        hasher
            .hash_password_into_with_memory(password, salt, &mut out, &mut area[..blocks])
            .is_ok()
    });
    // Output's equality is constant-time.
    hashed && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A new argon2id hash (random salt, the crate's recommended parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_hash(&h, "correct horse"));
        assert!(!verify_hash(&h, "wrong"));
        // sha512-crypt, as in a Dovecot passwd file ("password").
        let sha =
            sha_crypt::sha512_simple("password", &sha_crypt::Sha512Params::new(5000).unwrap())
                .unwrap();
        assert!(verify_hash(&sha, "password"));
        assert!(!verify_hash(&sha, "Password"));
        let b = bcrypt::hash("password", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        assert!(verify_hash(&b, "password"));
        assert!(!verify_hash(&b, "nope"));
        assert!(!verify_hash("plain", "plain"));
        assert!(!verify_hash("$argon2id$garbage", "x"));
        assert!(!verify_hash(dummy_hash(), ""));
    }

    #[test]
    fn sender_addresses() {
        let u = User {
            login: "a".into(),
            hash: String::new(),
            addresses: vec!["alice@example.org".into(), "@alice.test".into()],
            delivery: None,
            maildir: None,
        };
        assert!(u.may_send_as("alice@example.org"));
        assert!(u.may_send_as("Alice@EXAMPLE.org"));
        assert!(u.may_send_as("anything@alice.test"));
        assert!(!u.may_send_as("bob@example.org"));
        assert!(!u.may_send_as("alice@example.org.evil.test"));
        assert!(!u.may_send_as("x@sub.alice.test"));
        assert!(!u.may_send_as("noat"));
    }

    #[test]
    fn users_file_errors_name_file_key_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users.toml");
        std::fs::write(&p, "[[user]]\nlogin = \"a\"\npassword = \"plain\"\n").unwrap();
        let cfg = AuthConfig {
            users_file: p.clone(),
            ..AuthConfig::default()
        };
        let e = UserDb::load(&cfg).unwrap_err();
        assert!(
            e[0].contains("users.toml") && e[0].contains("user[0].password"),
            "{e:?}"
        );
        std::fs::write(&p, "[[user]]\nlogin = \"a\"\nbogus = 1\n").unwrap();
        let e = UserDb::load(&cfg).unwrap_err();
        assert!(e[0].contains("line 3"), "{e:?}");
    }
}
