//! The reloadable state: the configuration and what is derived from it
//! (users, the recipient directory, the policy), as one immutable
//! [`Snapshot`] behind a [`Live`] handle that the server and delivery
//! share. A reload builds a whole new snapshot and swaps it in; work in
//! progress keeps the snapshot it started with, so a connection or a
//! delivery never sees half of a reload.
//!
//! Reads the users file and the aliases file (through `auth` and
//! `directory`) and checks the next hops' extra trust anchors; touches
//! nothing else.

use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::policy::Policy;
use crate::users::directory::Directory;
use crate::users::UserDb;

/// One consistent configuration.
pub struct Snapshot {
    pub cfg: Arc<Config>,
    pub users: UserDb,
    pub directory: Arc<Directory>,
    pub policy: Policy,
    /// The DKIM keys of `[dkim]`, loaded.
    pub dkim: Arc<crate::signing::Signers>,
}

impl Snapshot {
    /// Loads the users and aliases a configuration names and checks them
    /// together; every problem is reported.
    pub fn load(cfg: Config) -> Result<Snapshot, Vec<String>> {
        if !cfg.delivery.tls_ca_file.is_empty() {
            crate::delivery::remote::load_ca_file(&cfg.delivery.tls_ca_file)
                .map_err(|e| vec![format!("delivery.tls_ca_file: {e}")])?;
        }
        let users = UserDb::load(&cfg.auth)?;
        let directory = Arc::new(Directory::load(&cfg, &users)?);
        let policy = Policy::new(&cfg, directory.clone());
        let dkim = Arc::new(crate::signing::Signers::load(&cfg.dkim)?);
        Ok(Snapshot {
            cfg: Arc::new(cfg),
            users,
            directory,
            policy,
            dkim,
        })
    }
}

/// The current snapshot, shared. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    current: Arc<RwLock<Arc<Snapshot>>>,
}

impl Live {
    pub fn new(s: Snapshot) -> Live {
        Live {
            current: Arc::new(RwLock::new(Arc::new(s))),
        }
    }

    /// The snapshot in force now.
    pub fn get(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new snapshot in force for everything that starts from now on.
    pub fn set(&self, s: Snapshot) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// The configuration in force now.
    pub fn cfg(&self) -> Arc<Config> {
        self.get().cfg.clone()
    }
}
