//! What the supervisor shows on `--metrics-bind`: its workers' slots, the
//! counts of workers that are gone, restarts by reason, and whether it is
//! shutting down.
//!
//! The supervisor's loop publishes to the [`Board`] between its turns; the
//! listener, a task of the same thread, reads it while the loop waits, so a
//! scrape never sees a worker both folded into the totals and still listed.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::process::{resident_bytes_of, Kill, Retirement, State, WorkerProcess};
use super::slot::Slot;
use crate::metrics::counters::Snapshot;
use crate::metrics::process::ProcessStats;
use crate::metrics::{event_loop_lag, Health, Report, Restart, Scrape, WorkerReport};

/// One worker as last published.
struct Listed {
    number: usize,
    pid: u32,
    state: &'static str,
    slot: Arc<Slot>,
    /// It serves, or drains the requests it has as it stops (until it is
    /// killed at its stop deadline).
    alive: bool,
    /// Its event loop should be beating: it serves, or was found stuck. A
    /// booting worker's loop does not run while the app imports, and a
    /// stopping one's ends before the process does (also when it is
    /// killed at its stop deadline).
    beats: bool,
}

#[derive(Default)]
struct Published {
    workers: Vec<Listed>,
    /// Workers wanted (`--workers`, changed by TTIN and TTOU).
    target: usize,
    stopping: bool,
    /// The final counters of every worker that has exited.
    gone: Snapshot,
    restarts: [u64; Restart::ALL.len()],
}

pub(super) struct Board {
    published: Mutex<Published>,
    /// How often the workers' event loops beat.
    heartbeat_interval: Duration,
}

impl Restart {
    fn of(retirement: Retirement) -> Restart {
        match retirement {
            Retirement::MaxRequests => Restart::MaxRequests,
            Retirement::StuckRequest => Restart::RequestTimeout,
            Retirement::Lifetime => Restart::Lifetime,
            Retirement::Memory => Restart::Memory,
            Retirement::Reload => Restart::Reload,
        }
    }
}

/// The `state` label of a worker.
fn state_label(state: State) -> &'static str {
    match state {
        State::Booting => "booting",
        State::Serving | State::Retiring(_) => "serving",
        State::Stopping { .. } | State::Hung { .. } | State::Killed(_) => "stopping",
    }
}

impl Board {
    /// A board for workers whose event loops beat every `heartbeat_interval`.
    pub(super) fn new(heartbeat_interval: Duration) -> Board {
        Board {
            published: Mutex::default(),
            heartbeat_interval,
        }
    }

    /// The workers as they are now, after a turn of the loop.
    pub(super) fn publish(&self, workers: &[WorkerProcess], target: usize, stopping: bool) {
        let mut published = self.published.lock();
        published.workers = workers
            .iter()
            .map(|worker| Listed {
                number: worker.number,
                pid: worker.pid,
                state: state_label(worker.state),
                slot: Arc::clone(&worker.slot),
                alive: matches!(
                    worker.state,
                    State::Serving
                        | State::Retiring(_)
                        | State::Stopping { .. }
                        | State::Hung {
                            why: Kill::Overdue,
                            ..
                        }
                ),
                beats: matches!(
                    worker.state,
                    State::Serving
                        | State::Retiring(_)
                        | State::Hung {
                            why: Kill::Stuck,
                            ..
                        }
                        | State::Killed(Kill::Stuck)
                ),
            })
            .collect();
        published.target = target;
        published.stopping = stopping;
    }

    /// A worker exited: its counts stay in the totals.
    pub(super) fn exited(&self, worker: &WorkerProcess) {
        let last = worker.slot.counters().snapshot();
        let mut published = self.published.lock();
        published.gone.add_counters(&last);
        published.workers.retain(|listed| listed.pid != worker.pid);
    }

    /// A worker is being replaced for `reason`.
    pub(super) fn restarting(&self, reason: Restart) {
        let index = Restart::ALL.iter().position(|r| *r == reason);
        if let Some(index) = index {
            self.published.lock().restarts[index] += 1;
        }
    }

    pub(super) fn retiring(&self, retirement: Retirement) {
        self.restarting(Restart::of(retirement));
    }
}

impl Scrape for Board {
    fn health(&self) -> Health {
        let published = self.published.lock();
        let serving = published
            .workers
            .iter()
            .filter(|worker| worker.state == "serving")
            .count();
        let not_ready = if published.stopping {
            Some("shutting down")
        } else if serving < published.target {
            Some("not every worker is serving")
        } else {
            None
        };
        let alive = published.workers.iter().any(|worker| worker.alive);
        Health {
            not_alive: (!alive).then(|| "no worker is serving".to_string()),
            not_ready: not_ready.map(str::to_string),
        }
    }

    fn report(&self) -> Report {
        let published = self.published.lock();
        let mut totals = published.gone.clone();
        let workers: Vec<WorkerReport> = published
            .workers
            .iter()
            .map(|worker| {
                let mut counters = worker.slot.counters().snapshot();
                totals.add_counters(&counters);
                if worker.beats {
                    counters.event_loop_lag_micros = event_loop_lag(
                        counters.event_loop_lag_micros,
                        worker.slot.since_beat(),
                        self.heartbeat_interval,
                    );
                }
                WorkerReport {
                    number: worker.number,
                    pid: worker.pid,
                    state: worker.state,
                    resident_bytes: resident_bytes_of(worker.pid),
                    counters,
                }
            })
            .collect();
        Report {
            totals,
            workers,
            restarts: published.restarts,
            process: ProcessStats::current(),
        }
    }
}
