//! What a supervisor tells each worker it starts: its number, the inherited
//! descriptors (listening sockets and its shared [`Slot`](super::slot::Slot)),
//! and how many workers run.
//!
//! It travels in one environment variable, which the worker removes at once
//! so that processes the app starts do not take themselves for workers.
//! It names the supervisor's pid: a copy that leaked to a process whose
//! parent is not that supervisor is ignored.

use std::os::fd::RawFd;

/// The variable the handoff travels in.
pub(crate) const VARIABLE: &str = "RSASGI_WORKER_HANDOFF";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handoff {
    /// 1-based, reused by the worker that replaces this one.
    pub number: usize,
    pub supervisor_pid: u32,
    pub slot_fd: RawFd,
    /// Listening sockets, in `--bind` order.
    pub listener_fds: Vec<RawFd>,
    /// Workers the supervisor runs (for `wsgi.multiprocess`).
    pub workers: usize,
    /// The table the workers balance connections with, and this worker's
    /// seat in it (none when every seat was taken).
    pub balance: Option<(RawFd, usize)>,
    /// The file its faulthandler writes Python stacks to, which the
    /// supervisor reads when the worker is stuck (none if it could not be
    /// created: the stacks then go to stderr).
    pub stacks: Option<RawFd>,
}

impl Handoff {
    pub(crate) fn encode(&self) -> String {
        let fds: Vec<String> = self.listener_fds.iter().map(RawFd::to_string).collect();
        let mut encoded = format!(
            "number={} supervisor={} slot={} listeners={} workers={}",
            self.number,
            self.supervisor_pid,
            self.slot_fd,
            fds.join(","),
            self.workers
        );
        if let Some((fd, seat)) = self.balance {
            encoded.push_str(&format!(" balance={fd}:{seat}"));
        }
        if let Some(fd) = self.stacks {
            encoded.push_str(&format!(" stacks={fd}"));
        }
        encoded
    }

    pub(crate) fn decode(raw: &str) -> Option<Handoff> {
        let mut handoff = Handoff {
            number: 0,
            supervisor_pid: 0,
            slot_fd: -1,
            listener_fds: Vec::new(),
            workers: 0,
            balance: None,
            stacks: None,
        };
        for field in raw.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "number" => handoff.number = value.parse().ok()?,
                "supervisor" => handoff.supervisor_pid = value.parse().ok()?,
                "slot" => handoff.slot_fd = value.parse().ok()?,
                "listeners" => {
                    handoff.listener_fds = value
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .ok()?;
                }
                "workers" => handoff.workers = value.parse().ok()?,
                "balance" => {
                    let (fd, seat) = value.split_once(':')?;
                    handoff.balance = Some((fd.parse().ok()?, seat.parse().ok()?));
                }
                "stacks" => handoff.stacks = Some(value.parse().ok()?),
                // From a newer supervisor (a rolling restart onto an older
                // rsasgi): what this build does not know of, it does without.
                _ => {}
            }
        }
        let complete = handoff.number > 0
            && handoff.supervisor_pid > 0
            && handoff.slot_fd >= 0
            && handoff.workers > 0
            && !handoff.listener_fds.is_empty();
        complete.then_some(handoff)
    }

    /// Reads and removes the handoff from the environment; `Some` only when
    /// it is well formed and our parent is the supervisor it names. Call it
    /// first thing, before any thread that reads the environment starts.
    pub(crate) fn take_from_env() -> Option<Handoff> {
        let raw = std::env::var(VARIABLE).ok()?;
        std::env::remove_var(VARIABLE);
        let handoff = Handoff::decode(&raw)?;
        (std::os::unix::process::parent_id() == handoff.supervisor_pid).then_some(handoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let handoff = Handoff {
            number: 3,
            supervisor_pid: 1234,
            slot_fd: 7,
            listener_fds: vec![4, 5],
            workers: 4,
            balance: None,
            stacks: None,
        };
        assert_eq!(Handoff::decode(&handoff.encode()), Some(handoff.clone()));
        let balanced = Handoff {
            balance: Some((8, 17)),
            ..handoff.clone()
        };
        assert_eq!(Handoff::decode(&balanced.encode()), Some(balanced));
        let dumping = Handoff {
            stacks: Some(9),
            ..handoff.clone()
        };
        assert_eq!(Handoff::decode(&dumping.encode()), Some(dumping));
        let newer = format!("{} later=1", handoff.encode());
        assert_eq!(Handoff::decode(&newer), Some(handoff));
    }

    #[test]
    fn anything_malformed_is_ignored() {
        for raw in [
            "",
            "number=1",
            "number=x supervisor=1 slot=3 listeners=4 workers=1",
            "number=1 supervisor=1 slot=3 listeners= workers=1",
            "number=0 supervisor=1 slot=3 listeners=4 workers=1",
            "number=1 supervisor=1 slot=3 listeners=4 workers=1 balance=5",
            "number=1 supervisor=1 slot=3 listeners=4 workers=1 balance=5:x",
        ] {
            assert_eq!(Handoff::decode(raw), None, "{raw}");
        }
    }
}
