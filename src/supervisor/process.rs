//! One worker process as the supervisor sees it: how it is started, what
//! state it is in, and how it is signalled.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::balance::{Balance, TakenSeat};
use super::handoff::{self, Handoff};
use super::interpreter;
use super::privileges::Credentials;
use super::slot::Slot;
use super::systemd;
use crate::config_file;
use crate::stacks::StackFile;

/// How the supervisor starts a worker: a fresh interpreter running
/// `python -m rsasgi` with the user's own arguments, never a fork of the
/// supervisor (whose threads and locks would be copied mid-state).
pub(super) struct WorkerCommand {
    pub program: String,
    /// The supervisor's interpreter options, `-m rsasgi`, the user's arguments.
    pub args: Vec<std::ffi::OsString>,
    /// The supervisor's first `sys.path` entry, for [`interpreter::PATH_VARIABLE`].
    pub path_entry: Option<std::ffi::OsString>,
    /// The configuration file's settings, for [`config_file::INHERITED_VARIABLE`].
    pub file_settings: Option<String>,
    /// The listening sockets every worker inherits, at the same numbers.
    pub listener_fds: Vec<RawFd>,
    /// `--user`/`--group`, taken on in the child before it runs Python.
    pub credentials: Option<Credentials>,
    /// The table the workers spread connections with (none if it could not
    /// be created: they then accept as they come).
    pub balance: Option<Arc<Balance>>,
}

/// Why a serving worker is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retirement {
    MaxRequests,
    /// A WSGI thread ran past `--timeout-request`.
    StuckRequest,
    Lifetime,
    Memory,
    /// SIGHUP: a rolling restart onto fresh code.
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Importing the app, running the lifespan startup.
    Booting,
    Serving,
    /// Serving until its replacement serves.
    Retiring(Retirement),
    /// Sent SIGTERM (or SIGQUIT); killed if still there at `deadline`.
    Stopping {
        deadline: Instant,
    },
    /// Stuck (`why`): asked for its stacks, which are logged when it is
    /// killed at `kill_at`.
    Hung {
        kill_at: Instant,
        why: Kill,
    },
    /// Sent SIGKILL (`why`); only its exit is awaited.
    Killed(Kill),
}

/// Why the supervisor kills a worker: what its exit means, and what its
/// log line says (the supervisor's SIGKILL is not the OOM killer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    /// Its event loop stopped beating, or it ran past its boot deadline: it
    /// is replaced.
    Stuck,
    /// Told to stop, it is still there at its stop deadline (a thread of the
    /// app that does not end, a loop the app blocks): it was on its way out,
    /// and nothing replaces it.
    Overdue,
}

pub(super) struct WorkerProcess {
    /// 1 to `--workers`; a replacement takes the number of the one it replaces.
    pub number: usize,
    pub pid: u32,
    child: Child,
    pub slot: Arc<Slot>,
    pub started: Instant,
    pub state: State,
    /// Which rolling restart (SIGHUP) started it.
    pub generation: u64,
    /// The pid of the worker this one replaces once it serves; taken when
    /// it serves, so that it names a predecessor still waiting for it.
    pub replaces: Option<u32>,
    /// Its `--limit-max-requests`, jitter included.
    pub max_requests: Option<u64>,
    /// No new attempt to replace it before this (after a replacement failed).
    pub retire_not_before: Option<Instant>,
    /// Replacements of it that ended before serving, for the backoff.
    pub replacements_failed: u32,
    /// SIGUSR1 came while it booted, before it could handle the signal: it
    /// is sent once the worker serves (its files were opened before the
    /// rotation).
    pub reopen_pending: bool,
    /// Where it writes its Python stacks when asked (SIGUSR2).
    pub stacks: Option<StackFile>,
    /// Its seat in the connection table, freed with it once it is reaped.
    _seat: Option<TakenSeat>,
}

impl WorkerProcess {
    /// Starts worker `number` of `workers` (the handoff goes in its
    /// environment); `speaks_for_all`: see [`Handoff::speaks_for_all`].
    pub(super) fn spawn(
        command: &WorkerCommand,
        number: usize,
        workers: usize,
        generation: u64,
        max_requests: Option<(u64, u64)>,
        speaks_for_all: bool,
    ) -> io::Result<WorkerProcess> {
        let slot = Slot::create()?;
        let seat = command.balance.as_ref().and_then(Balance::take_seat);
        let balance = command
            .balance
            .as_ref()
            .zip(seat.as_ref())
            .map(|(table, seat)| (table.fd(), seat.index()));
        let stacks = StackFile::create()
            .inspect_err(|err| {
                tracing::warn!(
                    "Cannot create the file worker {number}'s Python stacks are written to \
                     ({err}): if it gets stuck, they go to stderr"
                );
            })
            .ok();
        let handoff = Handoff {
            number,
            supervisor_pid: std::process::id(),
            slot_fd: slot.fd(),
            listener_fds: command.listener_fds.clone(),
            workers,
            balance,
            stacks: stacks.as_ref().map(StackFile::fd),
            build: Some(handoff::build()),
            speaks_for_all,
        };
        let mut inherited = command.listener_fds.clone();
        inherited.push(slot.fd());
        inherited.extend(balance.map(|(fd, _)| fd));
        inherited.extend(handoff.stacks);
        let credentials = command.credentials.clone();
        let mut process = Command::new(&command.program);
        process
            .args(&command.args)
            .env(handoff::VARIABLE, handoff.encode());
        if let Some(settings) = &command.file_settings {
            process.env(config_file::INHERITED_VARIABLE, settings);
        }
        if let Some(entry) = &command.path_entry {
            process.env(interpreter::PATH_VARIABLE, entry);
        }
        for variable in systemd::NOTIFY_VARS {
            process.env_remove(variable);
        }
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes async-signal-safe system calls on descriptors and on
        // the process itself; it allocates nothing.
        unsafe {
            process.pre_exec(move || {
                for &fd in &inherited {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // A supervisor killed with -9 cannot stop its workers; the
                // kernel tells them instead, and they shut down gracefully.
                if let Some(credentials) = &credentials {
                    credentials.apply()?;
                }
                // After the switch: changing credentials clears the setting.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = process.spawn()?;
        Ok(WorkerProcess {
            number,
            pid: child.id(),
            child,
            slot: Arc::new(slot),
            started: Instant::now(),
            state: State::Booting,
            generation,
            replaces: None,
            max_requests: max_requests
                .map(|(limit, jitter)| limit.saturating_add(random_up_to(jitter))),
            retire_not_before: None,
            replacements_failed: 0,
            reopen_pending: false,
            stacks,
            _seat: seat,
        })
    }

    /// "worker 2 (pid 1234)", as every log line about it starts.
    pub(super) fn name(&self) -> String {
        format!("worker {} (pid {})", self.number, self.pid)
    }

    /// Whether it serves or will serve: not on its way out.
    pub(super) fn is_active(&self) -> bool {
        matches!(
            self.state,
            State::Booting | State::Serving | State::Retiring(_)
        )
    }

    pub(super) fn signal(&self, signal: libc::c_int) {
        // The child is not reaped until try_wait says so, so the pid cannot
        // have been reused by another process.
        let pid = libc::pid_t::try_from(self.pid).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Asks it for its Python stacks (its faulthandler writes them on
    /// SIGUSR2), which [`StackFile::take`] then returns: these alone, not
    /// those a SIGUSR2 sent to it from outside had it write before.
    pub(super) fn ask_for_stacks(&self) {
        if let Some(Err(err)) = self.stacks.as_ref().map(StackFile::discard) {
            tracing::warn!(
                "Cannot empty the file {}'s Python stacks are written to ({err}): stacks it \
                 wrote before, on a SIGUSR2 sent from outside, may precede those asked for now",
                self.name()
            );
        }
        self.signal(libc::SIGUSR2);
    }

    /// Its exit status, once it has exited (reaping it).
    pub(super) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident memory, from `/proc/PID/statm`.
    pub(super) fn resident_bytes(&self) -> Option<u64> {
        resident_bytes_of(self.pid)
    }

    pub(super) fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Resident memory of process `pid`, from `/proc/PID/statm`.
pub(super) fn resident_bytes_of(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page_size)
}

/// How a process ended, in words: "exited with code 1", "was killed by SIGKILL".
pub(super) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => format!("was killed by {}", signal_name(signal)),
        None => "ended".into(),
    }
}

pub(super) fn signal_name(signal: libc::c_int) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL (the OOM killer, or kill -9)",
        libc::SIGSEGV => "SIGSEGV (a crash in native code)",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {signal}"),
    };
    name.into()
}

/// A number from 0 to `max`, different for each call; for jitter, where any
/// spread will do (std's hasher keys are random per instance).
fn random_up_to(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() % (max.saturating_add(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_for_operators() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "was killed by SIGKILL (the OOM killer, or kill -9)"
        );
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let draws: Vec<u64> = (0..200).map(|_| random_up_to(10)).collect();
        assert!(draws.iter().all(|&n| n <= 10));
        assert!(draws.iter().any(|&n| n != draws[0]));
        assert_eq!(random_up_to(0), 0);
    }
}
