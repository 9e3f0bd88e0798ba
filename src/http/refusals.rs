//! How the 503s of `--limit-concurrency` are logged, and the 504s of
//! `--timeout-request` for WSGI requests that waited it out for a thread.
//!
//! A server over its limit refuses requests as fast as they come, and a
//! warning for each would be thousands of lines a second, written just when
//! the worker has the least time for them (each 503 is in the access log
//! anyway). So the first refusal of a burst is logged at once, the ones
//! after it are counted and summed up every [`SUMMARY_EVERY`], and the
//! burst ends with the first such period that had none: the next refusal is
//! logged at once again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often a burst of refusals is summed up while it lasts.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The refusals of one worker. Counted and summed up on its reactor thread.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Refusals since the last line.
    counted: AtomicU64,
    /// A burst is on: a summary is due at the end of the current period.
    in_burst: AtomicBool,
}

impl Refusals {
    /// Counts a refusal; `true` for the first of a burst, which the caller
    /// logs, and then sums up the burst with [`Refusals::period_ended`]
    /// every [`SUMMARY_EVERY`] until that returns `None`.
    pub(crate) fn refused(&self) -> bool {
        if self.in_burst.swap(true, Ordering::Relaxed) {
            self.counted.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    }

    /// The refusals of the period just ended, to log; `None` when there were
    /// none, which ends the burst.
    pub(crate) fn period_ended(&self) -> Option<u64> {
        match self.counted.swap(0, Ordering::Relaxed) {
            0 => {
                self.in_burst.store(false, Ordering::Relaxed);
                None
            }
            count => Some(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_first_then_summed_up_until_a_quiet_period() {
        let refusals = Refusals::default();
        assert!(refusals.refused());
        for _ in 0..999 {
            assert!(!refusals.refused());
        }
        assert_eq!(refusals.period_ended(), Some(999));
        assert!(!refusals.refused());
        assert_eq!(refusals.period_ended(), Some(1));
        // A period with none ends the burst; the next refusal starts another.
        assert_eq!(refusals.period_ended(), None);
        assert!(refusals.refused());
        assert_eq!(refusals.period_ended(), None);
    }

    #[test]
    fn a_single_refusal_is_one_line() {
        let refusals = Refusals::default();
        assert!(refusals.refused());
        assert_eq!(refusals.period_ended(), None);
    }
}
