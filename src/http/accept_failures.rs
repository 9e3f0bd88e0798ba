//! How a run of failed `accept()` calls is logged.
//!
//! Out of file descriptors (or kernel memory), a worker fails an accept each
//! time it retries, ten times a second, for as long as the condition lasts:
//! one error line each would bury everything else in the log. So the first
//! failure of a run is logged at once, the ones after it are summed up every
//! [`REPEAT_EVERY`], and the first accept that works again ends the run
//! with a line that says how long it lasted.

use std::time::{Duration, Instant};

/// How often a run of failures that goes on is logged again.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// What to log about an accept's outcome, if anything.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure after a success.
    First,
    /// `failures` more since the run was last logged, `for_` after it began.
    StillFailing { failures: u64, for_: Duration },
    /// An accept works again after `failures` in a row over `lasted`.
    Recovered { failures: u64, lasted: Duration },
}

/// The current run of failed accepts of one accept loop, if any.
#[derive(Debug, Default)]
pub(crate) struct AcceptFailures {
    run: Option<Run>,
}

#[derive(Debug)]
struct Run {
    began: Instant,
    logged: Instant,
    failures: u64,
    unlogged: u64,
}

impl AcceptFailures {
    /// An accept failed at `now`.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<Report> {
        let Some(run) = &mut self.run else {
            self.run = Some(Run {
                began: now,
                logged: now,
                failures: 1,
                unlogged: 0,
            });
            return Some(Report::First);
        };
        run.failures += 1;
        run.unlogged += 1;
        if now.saturating_duration_since(run.logged) < REPEAT_EVERY {
            return None;
        }
        run.logged = now;
        Some(Report::StillFailing {
            failures: std::mem::take(&mut run.unlogged),
            for_: now.saturating_duration_since(run.began),
        })
    }

    /// An accept worked at `now` (the caller reads the clock only when
    /// [`Self::failing`] says there is a run to end).
    pub(crate) fn succeeded(&mut self, now: Instant) -> Option<Report> {
        self.run.take().map(|run| Report::Recovered {
            failures: run.failures,
            lasted: now.saturating_duration_since(run.began),
        })
    }

    /// Whether the last accept failed.
    pub(crate) fn failing(&self) -> bool {
        self.run.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_run_is_logged_first_then_every_ten_seconds_then_at_its_end() {
        let start = Instant::now();
        let mut failures = AcceptFailures::default();
        assert!(!failures.failing());
        assert_eq!(failures.failed(start), Some(Report::First));
        assert!(failures.failing());
        // Retries every 100 ms: quiet until ten seconds after the first line.
        for step in 1..100 {
            assert_eq!(
                failures.failed(after(start, step * 100)),
                None,
                "step {step}"
            );
        }
        assert_eq!(
            failures.failed(after(start, 10_000)),
            Some(Report::StillFailing {
                failures: 100,
                for_: Duration::from_secs(10)
            })
        );
        assert_eq!(failures.failed(after(start, 10_100)), None);
        assert_eq!(
            failures.succeeded(after(start, 10_150)),
            Some(Report::Recovered {
                failures: 102,
                lasted: Duration::from_millis(10_150)
            })
        );
        assert!(!failures.failing());
        assert_eq!(failures.succeeded(after(start, 10_200)), None);
    }

    #[test]
    fn a_new_run_starts_over() {
        let start = Instant::now();
        let mut failures = AcceptFailures::default();
        assert_eq!(failures.failed(start), Some(Report::First));
        assert_eq!(
            failures.succeeded(after(start, 100)),
            Some(Report::Recovered {
                failures: 1,
                lasted: Duration::from_millis(100)
            })
        );
        // Seconds later another run: its first failure is logged at once, and its
        // count does not carry the last run's.
        assert_eq!(failures.failed(after(start, 5_000)), Some(Report::First));
        assert_eq!(failures.failed(after(start, 5_100)), None);
        assert_eq!(
            failures.succeeded(after(start, 5_200)),
            Some(Report::Recovered {
                failures: 2,
                lasted: Duration::from_millis(200)
            })
        );
    }

    #[test]
    fn a_clock_that_goes_back_does_not_panic_or_log() {
        let start = Instant::now() + Duration::from_secs(60);
        let mut failures = AcceptFailures::default();
        assert_eq!(failures.failed(start), Some(Report::First));
        assert_eq!(failures.failed(start - Duration::from_secs(30)), None);
        assert_eq!(
            failures.succeeded(start - Duration::from_secs(30)),
            Some(Report::Recovered {
                failures: 2,
                lasted: Duration::ZERO
            })
        );
    }
}
