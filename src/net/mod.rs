//! Tokio glue both directions share: the byte stream a session runs on
//! (plain TCP, TLS as server or client, a Unix socket), the one loop that
//! drives an SMTP/LMTP client session over such a stream, and the clock.
//! No protocol knowledge of its own: that is `proto`'s. Untrusted bytes
//! pass through here to `proto`.

pub mod client_driver;
pub mod clock;
pub mod stream;

pub use clock::{Clock, ManualClock, SystemClock};
pub use stream::Stream;
