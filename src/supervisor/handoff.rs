//! What a supervisor tells each worker it starts: its number, the inherited
//! descriptors (listening sockets and its shared [`Slot`](super::slot::Slot)),
//! and how many workers run.
//!
//! It travels in one environment variable, which the worker removes at once
//! so that processes the app starts do not take themselves for workers.
//! It names the supervisor's pid: a copy that leaked to a process whose
//! parent is not that supervisor is ignored. It names the supervisor's
//! build too, which a worker must share (see [`build`]).

use std::os::fd::RawFd;

/// The variable the handoff travels in.
pub(crate) const VARIABLE: &str = "RSASGI_WORKER_HANDOFF";

/// This build, as a worker and its supervisor compare it: the version, and
/// a fingerprint of the sources that lay out this handoff and the memory
/// they share ("0.1.0+9f3c0a7e5d21b864"). Workers are started from the
/// installed rsasgi: upgraded in place (`pip install -U`) under a running
/// supervisor, the next worker it starts is of the new build, which may
/// read and write that memory at other places.
pub(crate) fn build() -> String {
    format!("{}+{LAYOUT:016x}", env!("CARGO_PKG_VERSION"))
}

/// The fingerprint of [`build`]: any change to these files changes it.
const LAYOUT: u64 = fingerprint(&[
    include_bytes!("handoff.rs"),
    include_bytes!("shared_memory.rs"),
    include_bytes!("slot.rs"),
    include_bytes!("balance.rs"),
    include_bytes!("../metrics/counters.rs"),
]);

/// FNV-1a over `sources`, at compile time.
const fn fingerprint(sources: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut file = 0;
    while file < sources.len() {
        let bytes = sources[file];
        let mut at = 0;
        while at < bytes.len() {
            hash ^= bytes[at] as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            at += 1;
        }
        file += 1;
    }
    hash
}

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
    /// The supervisor's [`build`] (none from a supervisor older than the
    /// check).
    pub build: Option<String>,
    /// Whether this worker says what is said once for all of them (a
    /// setting the app makes useless): the first worker 1 of a generation,
    /// not the ones that replace it after a crash or `--max-requests`.
    pub speaks_for_all: bool,
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
        if let Some(build) = &self.build {
            encoded.push_str(&format!(" build={build}"));
        }
        if self.speaks_for_all {
            encoded.push_str(" speaks=1");
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
            build: None,
            speaks_for_all: false,
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
                "build" => handoff.build = Some(value.to_string()),
                "speaks" => handoff.speaks_for_all = value == "1",
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

    /// Whether this worker may serve under the supervisor that started it:
    /// both must be the same [`build`]. Else the error to log before the
    /// worker exits as one that cannot boot.
    pub(crate) fn check_build(&self) -> Result<(), String> {
        let mine = build();
        let theirs = match &self.build {
            Some(theirs) if *theirs == mine => return Ok(()),
            Some(theirs) => format!("rsasgi {theirs}"),
            None => "an older rsasgi".to_string(),
        };
        Err(format!(
            "This worker is rsasgi {mine}, but its supervisor (pid {}) runs {theirs}: rsasgi \
             was upgraded or reinstalled under the running service, and a worker of another \
             build cannot share the supervisor's memory; restart the service after an upgrade",
            self.supervisor_pid
        ))
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
            build: Some(build()),
            speaks_for_all: false,
        };
        assert_eq!(Handoff::decode(&handoff.encode()), Some(handoff.clone()));
        let speaking = Handoff {
            speaks_for_all: true,
            ..handoff.clone()
        };
        assert_eq!(Handoff::decode(&speaking.encode()), Some(speaking));
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
    fn a_worker_serves_only_under_a_supervisor_of_its_own_build() {
        let handoff = Handoff::decode(&format!(
            "number=1 supervisor=42 slot=3 listeners=4 workers=1 build={}",
            build()
        ))
        .unwrap();
        assert_eq!(handoff.check_build(), Ok(()));

        let newer = Handoff {
            build: Some("99.0.0+0123456789abcdef".into()),
            ..handoff.clone()
        };
        let refused = newer.check_build().unwrap_err();
        assert!(refused.contains(&format!("This worker is rsasgi {}", build())));
        assert!(refused.contains("supervisor (pid 42) runs rsasgi 99.0.0+0123456789abcdef"));
        assert!(refused.contains("restart the service"));

        // A supervisor from before the check says no build: its layout is unknown.
        let older = Handoff::decode("number=1 supervisor=42 slot=3 listeners=4 workers=1").unwrap();
        assert_eq!(older.build, None);
        assert!(older
            .check_build()
            .unwrap_err()
            .contains("runs an older rsasgi"));
    }

    #[test]
    fn the_build_names_the_version_and_a_fingerprint_of_the_layout() {
        let build = build();
        let (version, layout) = build.split_once('+').unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert_eq!(layout.len(), 16);
        assert!(!build.contains(char::is_whitespace));
        assert_ne!(fingerprint(&[b"a"]), fingerprint(&[b"b"]));
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"ab", b"d"]));
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
