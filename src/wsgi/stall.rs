//! Noticing a pool whose threads are all held while requests wait.
//!
//! A view that never returns (a lock never released, a call with no
//! timeout) holds its thread for good; when every thread is so held, the
//! requests behind them wait in the queue for ever. The worker's health
//! check does not see it: the event loop it watches is not blocked. So the
//! reactor looks at the queue every [`CHECK_EVERY`] and warns once requests
//! have waited [`WARN_AFTER`] with no thread taking any, again every
//! [`REPEAT_EVERY`] while that lasts, and says when threads take requests
//! again. The pool threads only count the requests they take.

use std::time::{Duration, Instant};

/// How often the reactor looks at the queue.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long requests wait, with no thread taking one, before the warning:
/// longer than a busy pool leaves requests waiting (its threads free up
/// within a view's time), short enough to name the trouble while it starts.
const WARN_AFTER: Duration = Duration::from_secs(5);

/// How often the warning is repeated while the pool stays stuck: a stuck
/// pool lasts, and stays visible in the log without flooding it.
const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// What the log says about the queue after a look at it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stall {
    /// Requests have waited `waited` (at least) with no thread taking any.
    Stuck { waited: Duration },
    /// Threads take requests again, after none was taken for `lasted`.
    Over { lasted: Duration },
}

/// The reactor's view of the queue from one look to the next.
#[derive(Debug, Default)]
pub(crate) struct StallWatch {
    /// The requests the threads had taken at the last look.
    taken: u64,
    /// Since when the queue has had requests with none taken (from the look
    /// that first saw it so: the oldest request has waited at least since).
    waiting_since: Option<Instant>,
    /// When the warning was last given for the current stall.
    warned: Option<Instant>,
}

impl StallWatch {
    /// Takes a look: `queued` requests wait now, and the threads have taken
    /// `taken` since the pool started. Returns what to log, if anything.
    pub(crate) fn look(&mut self, now: Instant, queued: usize, taken: u64) -> Option<Stall> {
        let moved = std::mem::replace(&mut self.taken, taken) != taken;
        if queued == 0 || moved {
            // The stall, if there was one, is over; requests waiting now
            // have waited since this look at least.
            let since = self.waiting_since.take();
            self.waiting_since = (queued > 0).then_some(now);
            return self.warned.take().zip(since).map(|(_, since)| Stall::Over {
                lasted: now.duration_since(since),
            });
        }
        let since = *self.waiting_since.get_or_insert(now);
        let waited = now.duration_since(since);
        let due = match self.warned {
            None => waited >= WARN_AFTER,
            Some(at) => now.duration_since(at) >= REPEAT_EVERY,
        };
        if !due {
            return None;
        }
        self.warned = Some(now);
        Some(Stall::Stuck { waited })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn requests_waiting_with_none_taken_warn_then_repeat_then_end() {
        let start = Instant::now();
        let mut watch = StallWatch::default();
        assert_eq!(watch.look(start, 2, 10), None);
        for n in 1..5 {
            assert_eq!(watch.look(start + secs(n), 2, 10), None, "at {n}s");
        }
        assert_eq!(
            watch.look(start + secs(5), 3, 10),
            Some(Stall::Stuck { waited: secs(5) })
        );
        for n in 6..35 {
            assert_eq!(watch.look(start + secs(n), 3, 10), None, "at {n}s");
        }
        assert_eq!(
            watch.look(start + secs(35), 3, 10),
            Some(Stall::Stuck { waited: secs(35) })
        );
        // A thread takes one: the stall is over, and the requests left
        // have waited only since now, as far as anyone can tell.
        assert_eq!(
            watch.look(start + secs(36), 2, 11),
            Some(Stall::Over { lasted: secs(36) })
        );
        assert_eq!(watch.look(start + secs(40), 2, 11), None);
        assert_eq!(
            watch.look(start + secs(41), 2, 11),
            Some(Stall::Stuck { waited: secs(5) })
        );
        // An empty queue ends it too.
        assert_eq!(
            watch.look(start + secs(42), 0, 11),
            Some(Stall::Over { lasted: secs(6) })
        );
        assert_eq!(watch.look(start + secs(43), 0, 11), None);
    }

    #[test]
    fn a_queue_that_threads_keep_taking_from_is_no_stall() {
        let start = Instant::now();
        let mut watch = StallWatch::default();
        for n in 0..60 {
            assert_eq!(watch.look(start + secs(n), 5, n), None, "at {n}s");
        }
        // Idle: nothing queued, nothing taken.
        for n in 60..120 {
            assert_eq!(watch.look(start + secs(n), 0, 60), None, "at {n}s");
        }
    }
}
