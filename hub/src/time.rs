//! Timestamps: stored as milliseconds since the epoch, shown as RFC 3339 UTC.

use std::time::{Duration, UNIX_EPOCH};

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
