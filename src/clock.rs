//! A cheap clock for the connection timer's bookkeeping.
//!
//! Each request stamps when its response starts and stops waiting for the
//! client and when its connection goes idle: three clock reads a request,
//! for deadlines counted in seconds. `CLOCK_MONOTONIC` reads the CPU's
//! time-stamp counter and scales it, some 25 ns a read in a virtual machine
//! (about 0.6% of a WSGI hello-world request for the three);
//! `CLOCK_MONOTONIC_COARSE` is the time at the kernel's last tick, which the
//! vDSO only copies out.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Now, to within the kernel's tick (1 to 10 ms, by `CONFIG_HZ`) either way:
/// for stamps that deadlines of a second or more are counted from.
pub(crate) fn coarse_now() -> Instant {
    if cfg!(test) {
        // Unit tests pause and advance tokio's clock, which this one is not.
        return Instant::now();
    }
    match coarse() {
        Some(reading) => from_coarse(reading),
        None => Instant::now(),
    }
}

/// The `Instant` of a `CLOCK_MONOTONIC_COARSE` reading: an offset from a
/// reading of both clocks taken once.
fn from_coarse(reading: Duration) -> Instant {
    static ORIGIN: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (origin, coarse_origin) = *ORIGIN.get_or_init(|| origin(reading));
    match reading.checked_sub(coarse_origin) {
        Some(since) => origin + since,
        None => origin - (coarse_origin - reading),
    }
}

/// Both clocks read together: a coarse reading between two precise ones
/// close enough that the thread cannot have been preempted in between
/// (which would shift every stamp by as long), or `fallback` with the
/// precise clock read after it, if no such pair comes in a few tries.
fn origin(fallback: Duration) -> (Instant, Duration) {
    for _ in 0..ORIGIN_TRIES {
        let before = Instant::now();
        let Some(coarse) = coarse() else { break };
        let after = Instant::now();
        if after - before <= ORIGIN_PAIR_SPAN {
            return (before, coarse);
        }
    }
    (Instant::now(), fallback)
}

const ORIGIN_TRIES: usize = 100;
const ORIGIN_PAIR_SPAN: Duration = Duration::from_micros(20);

/// `CLOCK_MONOTONIC_COARSE`; `None` if refused (Linux has had it since 2.6.32).
fn coarse() -> Option<Duration> {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// `CLOCK_MONOTONIC`, the one clock every process of the machine shares
/// (std's `Instant` reads it too, but cannot say its value).
pub(crate) fn monotonic_now() -> Duration {
    read(libc::CLOCK_MONOTONIC).unwrap_or_default()
}

/// The clock `id` as a time since its start; `None` if the kernel refuses it.
fn read(id: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    if unsafe { libc::clock_gettime(id, &mut now) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tick is at most 10 ms; the rest allows for the test being
    /// descheduled between its readings.
    const SLACK: Duration = Duration::from_millis(30);

    #[test]
    fn coarse_readings_track_the_monotonic_clock() {
        for _ in 0..100 {
            let before = Instant::now();
            let coarse = from_coarse(coarse().expect("Linux has CLOCK_MONOTONIC_COARSE"));
            let after = Instant::now();
            assert!(
                coarse + SLACK >= before,
                "{coarse:?} well before {before:?}"
            );
            assert!(coarse <= after + SLACK, "{coarse:?} well after {after:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn coarse_readings_never_go_back() {
        let mut last = from_coarse(coarse().expect("Linux has CLOCK_MONOTONIC_COARSE"));
        for _ in 0..10_000 {
            let next = from_coarse(coarse().expect("Linux has CLOCK_MONOTONIC_COARSE"));
            assert!(next >= last);
            last = next;
        }
    }
}
