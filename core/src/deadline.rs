//! Instants a duration after another, saturating: durations from users and from the wire can be
//! arbitrarily long, and `Instant + Duration` panics past the clock's range.

use std::time::Duration;

use tokio::time::Instant;

/// About 30 years: later than any deadline that matters, and within every clock's range.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `d` after `from`, or about 30 years after it when `d` is longer.
pub fn saturating_after(from: Instant, d: Duration) -> Instant {
    from.checked_add(d.min(FAR))
        .or_else(|| from.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(from)
}

/// `d` from now, saturating as [`saturating_after`].
pub fn from_now(d: Duration) -> Instant {
    saturating_after(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_duration_gives_an_instant_without_panicking() {
        let now = Instant::now();
        assert_eq!(
            saturating_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(saturating_after(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
        assert!(from_now(Duration::from_micros(u64::MAX)) > now);
    }
}
