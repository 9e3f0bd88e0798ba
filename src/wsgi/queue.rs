//! The requests waiting for a pool thread.
//!
//! A lock-free FIFO that the reactor pushes to and the threads pop from,
//! with nothing per request but the push and the pop. Once a second the
//! reactor [sweeps](Queue::sweep) it: a request whose exchange closed (its
//! client left, or `--timeout-request` answered it) leaves the queue there,
//! not when a thread gets to it, which with every thread stuck is never.

use crossbeam_queue::SegQueue;

use crate::exchange::RequestStart;

/// What a sweep found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Swept {
    /// Requests still waiting for a thread.
    pub waiting: usize,
    /// Requests taken out: closed while they waited, so never to be run.
    pub dropped: usize,
}

#[derive(Default)]
pub(super) struct Queue {
    jobs: SegQueue<Box<RequestStart>>,
}

impl Queue {
    pub(super) fn push(&self, start: Box<RequestStart>) {
        self.jobs.push(start);
    }

    pub(super) fn pop(&self) -> Option<Box<RequestStart>> {
        self.jobs.pop()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Takes out the requests whose exchange closed. Only on the thread
    /// that pushes (the reactor), so that the requests put back keep their
    /// order; a thread that pops meanwhile may take one from behind them,
    /// or find the queue empty and go idle: the caller then makes sure a
    /// thread comes for those put back, as after a push.
    pub(super) fn sweep(&self) -> Swept {
        let mut swept = Swept::default();
        let mut kept = Vec::with_capacity(self.jobs.len());
        while let Some(start) = self.jobs.pop() {
            // A thread takes only an exchange that is open (under its lock,
            // with `take_for_thread`), so one seen closed here stays unrun.
            if start.exchange.progress().closed {
                swept.dropped += 1;
                // Closing it let go of its body and its places already (see
                // Exchange::close); its head goes with the job.
                start.exchange.finish_app();
                continue;
            }
            kept.push(start);
        }
        swept.waiting = kept.len();
        for start in kept {
            self.jobs.push(start);
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
        assert_eq!(
            queue.sweep(),
            Swept {
                waiting: 2,
                dropped: 2
            }
        );
        assert_eq!(Arc::strong_count(&left), 1, "out of the queue");
        let order: Vec<String> = std::iter::from_fn(|| queue.pop())
            .map(|start| start.exchange.uri.path().to_string())
            .collect();
        assert_eq!(order, ["/a", "/d"]);
    }
}
