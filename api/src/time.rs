//! Kubernetes' timestamps: RFC 3339 in UTC, in whole seconds (`metav1.Time`: creation and
//! deletion times, conditions) or microseconds (`metav1.MicroTime`: Lease renewals).

use jiff::Timestamp;
use serde_json::Value;

/// A time as `metav1.Time` writes it: `2026-12-02T04:30:00Z`.
pub fn format(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Unix seconds as `metav1.Time` writes them.
pub fn format_seconds(secs: i64) -> String {
    format(Timestamp::from_second(secs).unwrap_or_default())
}

/// A time as `metav1.MicroTime` writes it: `2026-12-02T04:30:00.123456Z`.
pub fn format_micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Now, as `metav1.Time`.
pub fn now_rfc3339() -> String {
    format(Timestamp::now())
}

/// Now, as `metav1.MicroTime`.
pub fn now_micro() -> String {
    format_micro(Timestamp::now())
}

/// Seconds since the epoch, now.
pub fn now_seconds() -> i64 {
    Timestamp::now().as_second()
}

/// Reads an RFC 3339 timestamp.
pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// Seconds since the epoch of a timestamp field.
pub fn seconds(v: &Value) -> Option<i64> {
    parse(v.as_str()?).map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_write_as_kubernetes_does() {
        let t = parse("2026-12-02T04:30:00.5Z").unwrap();
        assert_eq!(format(t), "2026-12-02T04:30:00Z");
        assert_eq!(format_micro(t), "2026-12-02T04:30:00.500000Z");
        assert_eq!(seconds(&Value::String(format(t))), Some(t.as_second()));
        assert_eq!(seconds(&Value::Null), None);
        assert_eq!(parse("yesterday"), None);
    }
}
