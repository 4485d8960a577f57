//! Dates in message header fields (RFC 5322 §3.3), through the `time`
//! crate.

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// RFC 5322 §3.3 date-time in UTC, e.g. "Mon, 23 Nov 2026 18:35:00 +0000".
/// A time outside what a header can carry (before 1900 or after 9999)
/// gives the Unix epoch.
pub fn rfc5322_date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_459_500),
            "Mon, 23 Nov 2026 18:45:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(i64::MAX), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(-3_000_000_000),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }
}
