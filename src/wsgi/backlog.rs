//! Noticing a pool too small for its load: requests wait long for a thread
//! while the threads keep taking them.
//!
//! Such a pool is not stuck (see `stall`): every request is run in turn,
//! but behind a queue, and clients that give up first get nothing (their
//! access lines say 499, and the app never ran). So when a look at the
//! queue finds a request that an earlier look saw already (it has waited
//! [`CHECK_EVERY`](super::stall::CHECK_EVERY) or more) while threads took
//! some since, the log warns at once; then it sums up the backlog every
//! [`SUMMARY_EVERY`] while it lasts, and says nothing once a period passes
//! without one.

use std::time::{Duration, Instant};

/// How often a backlog is summed up while it lasts.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// What the log says about the queue after a look at it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Backlog {
    /// Requests wait long for a thread, first seen at this look: `waiting`
    /// queued, the oldest for `waited` or more.
    Began { waiting: usize, waited: Duration },
    /// The period just ended, while the backlog lasts: at most
    /// `most_waiting` queued, the longest wait `longest` or more, and
    /// `left` clients gave up before a thread took their request.
    Lasts {
        most_waiting: usize,
        longest: Duration,
        left: u64,
    },
}

/// The reactor's view of the backlog from one look to the next.
#[derive(Debug, Default)]
pub(crate) struct BacklogWatch {
    /// The requests the threads had taken at the last look.
    taken: u64,
    /// While a backlog lasts, when its current period ends.
    period_ends: Option<Instant>,
    /// In the current period: whether a look found a request waiting long,
    /// and the most found waiting, the longest wait, and the clients that
    /// gave up.
    late: bool,
    most_waiting: usize,
    longest: Duration,
    left: u64,
}

impl BacklogWatch {
    /// Takes a look: `waiting` requests wait now, the oldest for `waited`
    /// if an earlier look saw it already; the threads have taken `taken`
    /// since the pool started; `left` clients gave up waiting since the
    /// last look. Returns what to log, if anything.
    pub(crate) fn look(
        &mut self,
        now: Instant,
        waiting: usize,
        waited: Option<Duration>,
        taken: u64,
        left: u64,
    ) -> Option<Backlog> {
        let moved = std::mem::replace(&mut self.taken, taken) != taken;
        // With no thread taking any, the queue does not move at all: that
        // is the stall watch's to tell.
        let late = waited.filter(|_| moved && waiting > 0);
        let Some(period_ends) = self.period_ends else {
            let waited = late?;
            self.start_period(now);
            return Some(Backlog::Began { waiting, waited });
        };
        self.left += left;
        if let Some(waited) = late {
            self.late = true;
            self.most_waiting = self.most_waiting.max(waiting);
            self.longest = self.longest.max(waited);
        }
        if now < period_ends {
            return None;
        }
        if !self.late {
            self.period_ends = None;
            return None;
        }
        let summary = Backlog::Lasts {
            most_waiting: self.most_waiting,
            longest: self.longest,
            left: self.left,
        };
        self.start_period(now);
        Some(summary)
    }

    fn start_period(&mut self, now: Instant) {
        self.period_ends = Some(now + SUMMARY_EVERY);
        self.late = false;
        self.most_waiting = 0;
        self.longest = Duration::ZERO;
        self.left = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_backlog_is_warned_of_at_once_then_summed_up_until_a_period_without_one() {
        let start = Instant::now();
        let at = |n| start + secs(n);
        let mut watch = BacklogWatch::default();
        // Requests queue, but none has waited a look yet.
        assert_eq!(watch.look(at(0), 5, None, 1, 0), None);
        assert_eq!(
            watch.look(at(1), 7, Some(secs(1)), 3, 0),
            Some(Backlog::Began {
                waiting: 7,
                waited: secs(1)
            })
        );
        for n in 2..11 {
            let waited = (n < 5).then(|| secs(n));
            assert_eq!(watch.look(at(n), 12 - n as usize, waited, 3 + n, 2), None);
        }
        assert_eq!(
            watch.look(at(11), 0, None, 20, 1),
            Some(Backlog::Lasts {
                most_waiting: 10,
                longest: secs(4),
                left: 19
            })
        );
        // A period with no long wait ends it, quietly; the next starts anew.
        for n in 12..21 {
            assert_eq!(watch.look(at(n), 0, None, 20, 0), None, "at {n}s");
        }
        assert_eq!(watch.look(at(21), 0, None, 20, 0), None);
        assert_eq!(
            watch.look(at(22), 2, Some(secs(1)), 21, 0),
            Some(Backlog::Began {
                waiting: 2,
                waited: secs(1)
            })
        );
    }

    #[test]
    fn requests_waiting_while_no_thread_takes_any_are_no_backlog() {
        let start = Instant::now();
        let mut watch = BacklogWatch::default();
        assert_eq!(watch.look(start, 3, None, 4, 0), None);
        for n in 1..60 {
            assert_eq!(watch.look(start + secs(n), 3, Some(secs(n)), 4, 0), None);
        }
    }
}
