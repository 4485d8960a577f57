//! What this server signs with and how: DKIM keys (loading, generating,
//! the DNS record to publish), DKIM signatures of mail it originates
//! (RFC 6376, RFC 8463), computed while the message streams in, and ARC
//! sets of mail it forwards (RFC 8617).
//!
//! Reads the key files `[dkim]` names and nothing else; may use `config`
//! and `message`. Message bytes reach it (untrusted, hashed, never
//! interpreted beyond the header fields to sign).

pub mod arc;
pub mod dkim;
pub mod keys;

pub use dkim::{SignStream, Signers};
pub use keys::Key;
