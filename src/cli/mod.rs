//! The `pigeon` command line: flags in, a library call, output out; no
//! rules of its own. One file per subcommand: [`serve`] (the daemon),
//! [`queue`] (`pigeon queue ...`), [`password`] (`hash-password`),
//! [`dkim`] (`pigeon dkim keygen|show`);
//! `sendmail` is [`crate::sendmail`]. Nothing in the library imports this.

pub mod dkim;
pub mod password;
pub mod queue;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::live::Snapshot;
use queue::{queue_list, queue_request, queue_show, ListFilter};

const DEFAULT_CONFIG: &str = "/etc/pigeon/pigeon.toml";

#[derive(Parser)]
#[command(
    name = "pigeon",
    version,
    about = "pigeon: an SMTP mail transfer agent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the mail server.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file; print every error with its key and line.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Read a password (without echo, or from standard input when it is not
    /// a terminal) and print its argon2id hash for the users file.
    HashPassword,
    /// Send a message read from standard input, as sendmail does (-t, -i,
    /// -f, -F, recipients); also what runs when pigeon is called as
    /// `sendmail`. Configuration: -C PATH or $PIGEON_CONFIG.
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// DKIM keys: make one, or print the DNS records of those configured.
    Dkim {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: DkimCmd,
    },
    /// Inspect the mail queue (reads the spool directly; safe while the server runs).
    Queue {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Spool directory to use instead of the one in the configuration.
        #[arg(long)]
        spool: Option<PathBuf>,
        #[command(subcommand)]
        cmd: QueueCmd,
    },
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Write a new private key (mode 0600, never over an existing file)
    /// and print the DNS TXT record and the configuration to add.
    Keygen {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// ed25519 (RFC 8463) or rsa (2048 bits, made with openssl).
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// Where to write the key (default /etc/pigeon/dkim/DOMAIN.SELECTOR.key).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the DNS TXT record of every configured key.
    Show,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// One line per message: id, age, size, sender, recipients and their state.
    List {
        #[arg(long)]
        json: bool,
        /// Only messages whose sender contains this text (case-insensitive).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages with a recipient containing this text.
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages with a recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages in this state: pending, delivered, failed (any
        /// recipient in it) or held.
        #[arg(long)]
        state: Option<String>,
    },
    /// Retry now (the given messages, or all), through the running daemon.
    Flush { ids: Vec<String> },
    /// Delete messages without notice, through the running daemon.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Keep messages from being delivered until released.
    Hold {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Let held messages be delivered again (at once).
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Return messages to their senders now, with a DSN.
    Bounce {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Envelope, per-recipient state and headers of one message.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        /// Print the whole stored message (headers and body) instead.
        #[arg(long)]
        body: bool,
    },
}

/// Runs the `pigeon` command (or `sendmail`, by the name it was called).
pub fn main() -> ExitCode {
    // Installed as /usr/sbin/sendmail (a link to pigeon), or `pigeon sendmail`:
    // sendmail's own option syntax, parsed by hand.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if prog == "sendmail" {
        return ExitCode::from(crate::sendmail::run(&args[1..]));
    }
    if args.get(1).map(String::as_str) == Some("sendmail") {
        return ExitCode::from(crate::sendmail::run(&args[2..]));
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(&config).map(Snapshot::load) {
            Some(Ok(snap)) => {
                println!(
                    "{}: ok ({} users, {} mailboxes, {} aliases, {} DKIM keys)",
                    config.display(),
                    snap.users.len(),
                    snap.directory.mailbox_count(),
                    snap.directory.alias_count(),
                    snap.dkim.all().len()
                );
                ExitCode::SUCCESS
            }
            Some(Err(errs)) => {
                for e in &errs {
                    eprintln!("{}: {e}", config.display());
                }
                ExitCode::FAILURE
            }
            None => ExitCode::FAILURE,
        },
        Cmd::Serve { config } => match load(&config) {
            Some(cfg) => serve::serve(&config, cfg),
            None => ExitCode::FAILURE,
        },
        Cmd::HashPassword => password::hash_password(),
        Cmd::Dkim { config, cmd } => match cmd {
            DkimCmd::Keygen {
                domain,
                selector,
                algorithm,
                out,
            } => {
                let algorithm = match algorithm.to_ascii_lowercase().as_str() {
                    "rsa" | "rsa-sha256" => crate::config::DkimAlgorithm::RsaSha256,
                    "ed25519" | "ed25519-sha256" => crate::config::DkimAlgorithm::Ed25519Sha256,
                    other => {
                        eprintln!(
                            "pigeon dkim keygen: unknown algorithm {other:?} (rsa or ed25519)"
                        );
                        return ExitCode::FAILURE;
                    }
                };
                // The configuration is optional here: it only says whom
                // the key file should belong to.
                let cfg = config
                    .exists()
                    .then(|| config::load(&config).ok())
                    .flatten();
                dkim::keygen(cfg.as_ref(), &domain, &selector, algorithm, out)
            }
            DkimCmd::Show => match load(&config) {
                Some(cfg) => dkim::show(&cfg),
                None => ExitCode::FAILURE,
            },
        },
        Cmd::Sendmail { args } => ExitCode::from(crate::sendmail::run(&args)),
        Cmd::Queue { config, spool, cmd } => {
            // Like other Unix tools, end quietly when the reader of our
            // output goes away (`pigeon queue list | head`).
            // SAFETY: restores the default action of one signal; no handler runs.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let dir = match spool {
                Some(d) => d,
                None => match load(&config) {
                    Some(cfg) => cfg.spool.dir.clone(),
                    None => return ExitCode::FAILURE,
                },
            };
            match cmd {
                QueueCmd::List {
                    json,
                    sender,
                    recipient,
                    domain,
                    state,
                } => {
                    let filter = ListFilter {
                        sender,
                        recipient,
                        domain,
                        state,
                    };
                    queue_list(&dir, json, &filter)
                }
                QueueCmd::Flush { ids } => queue_request(&dir, "flush", &ids),
                QueueCmd::Delete { ids } => queue_request(&dir, "delete", &ids),
                QueueCmd::Hold { ids } => queue_request(&dir, "hold", &ids),
                QueueCmd::Release { ids } => queue_request(&dir, "release", &ids),
                QueueCmd::Bounce { ids } => queue_request(&dir, "bounce", &ids),
                QueueCmd::Show { id, json, body } => queue_show(&dir, &id, json, body),
            }
        }
    }
}

/// The configuration at `path`, or None after printing every error.
pub(crate) fn load(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(errs) => {
            for e in &errs {
                eprintln!("{}: {e}", path.display());
            }
            None
        }
    }
}
