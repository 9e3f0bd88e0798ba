//! The requests waiting for a pool thread.
//!
//! A lock-free FIFO that the reactor pushes to and the threads pop from,
//! with nothing per request but the push and the pop. Once a second the
//! reactor [sweeps](Queue::sweep) it: a request whose exchange closed (its
//! client left, or `--timeout-request` answered it) leaves the queue there,
//! not when a thread gets to it, which with every thread stuck is never;
//! and each one waiting is stamped with the first sweep that saw it, which
//! tells how long the oldest has waited without a clock read per request.

use std::time::Instant;

use crossbeam_queue::SegQueue;

use crate::exchange::RequestStart;

/// A queued request, and when a sweep first saw it.
struct Job {
    start: Box<RequestStart>,
    seen: Option<Instant>,
}

/// What a sweep found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Swept {
    /// Requests still waiting for a thread.
    pub waiting: usize,
    /// When an earlier sweep first saw the oldest of them, if one did: it
    /// has waited at least since.
    pub oldest_seen: Option<Instant>,
    /// Requests taken out: closed while they waited, so never to be run.
    pub dropped: usize,
    /// Of those, the ones whose client left.
    pub left: usize,
}

#[derive(Default)]
pub(super) struct Queue {
    jobs: SegQueue<Job>,
}

impl Queue {
    pub(super) fn push(&self, start: Box<RequestStart>) {
        self.jobs.push(Job { start, seen: None });
    }

    pub(super) fn pop(&self) -> Option<Box<RequestStart>> {
        self.jobs.pop().map(|job| job.start)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Takes out the requests whose exchange closed and stamps the others
    /// with `now` if no sweep saw them before. Only on the thread that
    /// pushes (the reactor), so that the requests put back keep their
    /// order; a thread that pops meanwhile may take one from behind them,
    /// or find the queue empty and go idle: the caller then makes sure a
    /// thread comes for those put back, as after a push.
    pub(super) fn sweep(&self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        let mut kept = Vec::with_capacity(self.jobs.len());
        while let Some(mut job) = self.jobs.pop() {
            // A thread takes only an exchange that is open (under its lock,
            // with `take_for_thread`), so one seen closed here stays unrun.
            let exchange = &job.start.exchange;
            if exchange.progress().closed {
                swept.dropped += 1;
                swept.left += usize::from(exchange.client_left());
                // Closing it let go of its body and its places already (see
                // Exchange::close); its head goes with the job.
                exchange.finish_app();
                continue;
            }
            let seen = *job.seen.get_or_insert(now);
            if seen < now {
                swept.oldest_seen = Some(swept.oldest_seen.map_or(seen, |s| s.min(seen)));
            }
            kept.push(job);
        }
        swept.waiting = kept.len();
        for job in kept {
            self.jobs.push(job);
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::Method;

    use super::*;
    use crate::exchange::Exchange;

    fn request(path: &str) -> (Box<RequestStart>, Arc<Exchange>) {
        let (exchange, head) = Exchange::for_test(Method::GET, path, true, true);
        let start = Box::new(RequestStart {
            exchange: Arc::clone(&exchange),
            head,
        });
        (start, exchange)
    }

    #[test]
    fn a_sweep_takes_out_the_closed_and_keeps_the_rest_in_order() {
        let queue = Queue::default();
        let (a, _) = request("/a");
        let (b, left) = request("/b");
        let (c, timed_out) = request("/c");
        let (d, _) = request("/d");
        for start in [a, b, c, d] {
            queue.push(start);
        }
        left.close();
        timed_out.time_out();
        let first = Instant::now();
        let swept = queue.sweep(first);
        assert_eq!(
            swept,
            Swept {
                waiting: 2,
                oldest_seen: None,
                dropped: 2,
                left: 1
            }
        );
        assert_eq!(Arc::strong_count(&left), 1, "out of the queue");
        let (e, _) = request("/e");
        queue.push(e);
        // The next sweep knows the first two have waited since the first.
        let next = first + Duration::from_secs(1);
        assert_eq!(
            queue.sweep(next),
            Swept {
                waiting: 3,
                oldest_seen: Some(first),
                dropped: 0,
                left: 0
            }
        );
        let order: Vec<String> = std::iter::from_fn(|| queue.pop())
            .map(|start| start.exchange.uri.path().to_string())
            .collect();
        assert_eq!(order, ["/a", "/d", "/e"]);
    }
}
