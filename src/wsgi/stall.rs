//! Noticing a pool whose threads are all held while requests wait.
//!
//! A view that never returns (a lock never released, a call with no
//! timeout) holds its thread for good; when every thread is so held, the
//! requests behind them wait in the queue for ever. The worker's health
//! check does not see it: the event loop it watches is not blocked. So the
//! reactor looks at the queue every [`CHECK_EVERY`] and warns once requests
//! have waited [`WARN_AFTER`] with no thread taking any, again every
//! [`REPEAT_EVERY`] while that lasts, and says when threads take requests
//! again, or one is free. The pool threads only count the requests they
//! take.

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
    /// Takes a look: `queued` requests wait now, the threads have taken
    /// `taken` since the pool started, and `all_busy`: no thread is free.
    /// Returns what to log, if anything.
    pub(crate) fn look(
        &mut self,
        now: Instant,
        queued: usize,
        taken: u64,
        all_busy: bool,
    ) -> Option<Stall> {
        let moved = std::mem::replace(&mut self.taken, taken) != taken;
        if queued == 0 && !moved && all_busy {
            // Nothing waits, as the clients of those that did left, but the
            // threads are still held: the stall, if any, goes on, and the
            // next request waits as the last did.
            return None;
        }
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
        assert_eq!(watch.look(start, 2, 10, true), None);
        for n in 1..5 {
            assert_eq!(watch.look(start + secs(n), 2, 10, true), None, "at {n}s");
        }
        assert_eq!(
            watch.look(start + secs(5), 3, 10, true),
            Some(Stall::Stuck { waited: secs(5) })
        );
        for n in 6..35 {
            assert_eq!(watch.look(start + secs(n), 3, 10, true), None, "at {n}s");
        }
        assert_eq!(
            watch.look(start + secs(35), 3, 10, true),
            Some(Stall::Stuck { waited: secs(35) })
        );
        // A thread takes one: the stall is over, and the requests left
        // have waited only since now, as far as anyone can tell.
        assert_eq!(
            watch.look(start + secs(36), 2, 11, true),
            Some(Stall::Over { lasted: secs(36) })
        );
        assert_eq!(watch.look(start + secs(40), 2, 11, true), None);
        assert_eq!(
            watch.look(start + secs(41), 2, 11, true),
            Some(Stall::Stuck { waited: secs(5) })
        );
        // An empty queue with a thread free ends it too.
        assert_eq!(
            watch.look(start + secs(42), 0, 11, false),
            Some(Stall::Over { lasted: secs(6) })
        );
        assert_eq!(watch.look(start + secs(43), 0, 11, false), None);
    }

    #[test]
    fn a_queue_emptied_by_clients_leaving_while_the_threads_are_held_is_no_end() {
        let start = Instant::now();
        let mut watch = StallWatch::default();
        assert_eq!(watch.look(start, 4, 1, true), None);
        assert_eq!(
            watch.look(start + secs(5), 4, 1, true),
            Some(Stall::Stuck { waited: secs(5) })
        );
        // The clients leave; the threads are still held.
        for n in 6..20 {
            assert_eq!(watch.look(start + secs(n), 0, 1, true), None, "at {n}s");
        }
        // New requests wait behind the same threads: still the same stall.
        assert_eq!(watch.look(start + secs(20), 1, 1, true), None);
        assert_eq!(
            watch.look(start + secs(35), 1, 1, true),
            Some(Stall::Stuck { waited: secs(35) })
        );
        // A thread takes one at last.
        assert_eq!(
            watch.look(start + secs(36), 0, 2, false),
            Some(Stall::Over { lasted: secs(36) })
        );
    }

    #[test]
    fn a_queue_that_threads_keep_taking_from_is_no_stall() {
        let start = Instant::now();
        let mut watch = StallWatch::default();
        for n in 0..60 {
            assert_eq!(watch.look(start + secs(n), 5, n, true), None, "at {n}s");
        }
        // Idle: nothing queued, nothing taken.
        for n in 60..120 {
            assert_eq!(watch.look(start + secs(n), 0, 60, false), None, "at {n}s");
        }
    }
}
