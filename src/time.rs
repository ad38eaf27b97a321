//! Time as baton reads and writes it: durations from a config or a
//! manifest (bounded, so no clock arithmetic on them overflows), RFC 3339
//! stamps, and the wall clock in seconds. A leaf.

use std::time::{Duration, SystemTime};

/// Parses a duration such as `30s`, `500ms` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration such as 30s, 500ms or 2m ({e})"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "{:?} is longer than the {} days any duration may be",
            s.trim(),
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// The longest duration baton reads, from its config or a manifest: ten
/// years. Anything longer is a mistake or an attack, and would overflow a
/// clock when added to it.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// `t` in RFC 3339, to the second; a time past the year 9999, which RFC
/// 3339 cannot write, as seconds since the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_seconds(t)) {
        Ok(()) => text,
        Err(_) => {
            let seconds = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            format!("{} s after the epoch", seconds.as_secs())
        }
    }
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `n`th wait of a doubling back-off: `base` for `n = 0`, twice that
/// for `n = 1`, and so on, never more than `max` (and never overflowing,
/// whatever `n` is). Every back-off of the master is this one.
pub(crate) fn backoff(base: Duration, n: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.min(31)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_never_overflows() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (0..6).map(|n| backoff(s(1), n, s(10))).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(8), s(10), s(10)]);
        assert_eq!(backoff(s(1), u32::MAX, s(60)), s(60));
        assert_eq!(backoff(Duration::MAX, 3, Duration::MAX), Duration::MAX);
        assert_eq!(
            backoff(s(30), 0, s(10)),
            s(10),
            "the cap holds from the start"
        );
    }

    #[test]
    fn durations_are_bounded_and_stamps_always_print() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3651d").unwrap_err().contains("3650 days"));
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "400000000000 s after the epoch");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
