//! Spreading connections evenly over the workers.
//!
//! Every worker accepts from the same listening sockets, and the kernel
//! wakes all of them when a connection comes. The one already awake (it
//! accepted the previous connection a moment ago) wins nearly every race, so
//! a burst of keep-alive connections (a load balancer's or nginx's upstream
//! pool, opened at once) could land on one worker while the others idle:
//! measured with `--workers 2` and 64 connections, splits of 64/0 and 63/1
//! were common.
//!
//! So the workers share a table, one seat per worker process, in which each
//! publishes how many connections it has open and whether it is accepting
//! now. A worker with a pending connection that has [`MARGIN`] or more
//! connections above another worker that is accepting leaves the connection
//! to that one, checking again every [`DEFER_STEP`]; after [`MAX_DEFER`] it
//! takes it anyway (the other may be slow to wake, or stuck), so deferring
//! costs a connection a few milliseconds at worst and never strands it.
//!
//! The supervisor creates the table (an anonymous `memfd`, as the workers'
//! [`Slot`](super::Slot)s) and gives each worker a seat, freed when the
//! worker's process is reaped; only the worker writes its counts, and only
//! the supervisor takes and frees seats.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::shared_memory::SharedMemory;

/// Seats in the table: twice the most workers, since during a rolling
/// restart a replacement runs beside the worker it replaces.
const SEATS: usize = 2 * crate::config::MAX_WORKERS;

/// Connections a worker may have above another accepting worker before it
/// leaves new ones to it. Two, not one: between equals the race decides, and
/// a lead of one is no imbalance worth a wait.
pub(crate) const MARGIN: u64 = 2;

/// How often a worker that defers looks again at whether the connection is
/// still waiting and whether it should still defer.
pub(crate) const DEFER_STEP: Duration = Duration::from_millis(1);

/// The longest a worker leaves a waiting connection to the others.
pub(crate) const MAX_DEFER: Duration = Duration::from_millis(5);

/// How long a worker takes connections as they come once a connection it
/// left to the others waited [`MAX_DEFER`] untaken: a worker that looks
/// ready but is not (frozen, out of file descriptors) must not slow every
/// accept of the others.
const IGNORE_PEERS_FOR: Duration = Duration::from_secs(1);

#[repr(C)]
struct Seat {
    /// Non-zero while a worker process holds the seat (the supervisor's).
    taken: AtomicU64,
    /// Non-zero while the worker accepts connections (the worker's).
    accepting: AtomicU64,
    /// The worker's open connections (the worker's).
    connections: AtomicU64,
    _pad: u64,
}

#[repr(C)]
struct Table {
    /// One more than the highest seat ever taken: readers look no further.
    used: AtomicU64,
    seats: [Seat; SEATS],
}

/// The table as one process maps it.
pub(crate) struct Balance {
    memory: SharedMemory,
}

impl Balance {
    /// Supervisor side: a new, empty table.
    pub(crate) fn create() -> io::Result<Balance> {
        let memory = SharedMemory::create(c"rsasgi-balance", std::mem::size_of::<Table>())?;
        Ok(Balance { memory })
    }

    /// Worker side: maps the table handed down as descriptor `fd`, which
    /// this process then owns.
    pub(crate) fn inherit(fd: RawFd) -> io::Result<Balance> {
        let memory = SharedMemory::inherit(fd, std::mem::size_of::<Table>(), "connection table")?;
        Ok(Balance { memory })
    }

    fn table(&self) -> &Table {
        // SAFETY: the mapping is at least size_of::<Table>() bytes (checked
        // or set above), page-aligned, zero-initialised by the kernel (all
        // zeroes is a valid Table), lives as long as self, and every field
        // read or written is an atomic, so sharing it between processes is
        // sound.
        unsafe { &*(self.memory.as_ptr() as *const Table) }
    }

    /// The descriptor to hand to the workers.
    pub(crate) fn fd(&self) -> RawFd {
        self.memory.fd()
    }

    /// Supervisor side: a free seat for a worker about to start, `None` when
    /// every seat is taken (that worker then takes part in nothing).
    pub(crate) fn take_seat(self: &Arc<Self>) -> Option<TakenSeat> {
        let table = self.table();
        let index = table
            .seats
            .iter()
            .position(|seat| seat.taken.load(Ordering::Acquire) == 0)?;
        let seat = &table.seats[index];
        seat.accepting.store(0, Ordering::Relaxed);
        seat.connections.store(0, Ordering::Relaxed);
        seat.taken.store(1, Ordering::Release);
        let used = index as u64 + 1;
        if table.used.load(Ordering::Relaxed) < used {
            table.used.store(used, Ordering::Release);
        }
        Some(TakenSeat {
            balance: Arc::clone(self),
            index,
        })
    }

    /// Worker side: the seat the supervisor gave this process.
    pub(crate) fn seat(self: Arc<Self>, index: usize) -> Option<WorkerSeat> {
        (index < SEATS).then_some(WorkerSeat {
            balance: self,
            index,
            ignore_peers_until: Mutex::new(None),
        })
    }
}

/// A seat the supervisor gave a worker; freed when dropped (once the
/// worker's process is reaped).
pub(crate) struct TakenSeat {
    balance: Arc<Balance>,
    index: usize,
}

impl TakenSeat {
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Drop for TakenSeat {
    fn drop(&mut self) {
        let seat = &self.balance.table().seats[self.index];
        // A worker killed with -9 never said it stopped accepting.
        seat.accepting.store(0, Ordering::Relaxed);
        seat.connections.store(0, Ordering::Relaxed);
        seat.taken.store(0, Ordering::Release);
    }
}

/// A worker's own seat: what it publishes, and whether it should leave a
/// waiting connection to another worker.
pub(crate) struct WorkerSeat {
    balance: Arc<Balance>,
    index: usize,
    /// Set when the others let a connection wait too long.
    ignore_peers_until: Mutex<Option<Instant>>,
}

impl WorkerSeat {
    fn seat(&self) -> &Seat {
        &self.balance.table().seats[self.index]
    }

    /// Counts one more open connection (or WebSocket, whose connection
    /// hyper has let go of) until the guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>) -> HeldConnection {
        self.seat().connections.fetch_add(1, Ordering::Relaxed);
        HeldConnection(Arc::clone(self))
    }

    /// Whether this worker takes connections now (not while its event loop
    /// is blocked, nor once it shuts down).
    pub(crate) fn set_accepting(&self, accepting: bool) {
        self.seat()
            .accepting
            .store(u64::from(accepting), Ordering::Relaxed);
    }

    /// Whether another worker that is accepting has [`MARGIN`] or more
    /// connections fewer than this one.
    pub(crate) fn should_defer(&self) -> bool {
        if let Some(until) = *self.ignore_peers_until.lock() {
            if Instant::now() < until {
                return false;
            }
        }
        let table = self.balance.table();
        let mine = self.seat().connections.load(Ordering::Relaxed);
        if mine < MARGIN {
            return false;
        }
        let used = (table.used.load(Ordering::Acquire) as usize).min(SEATS);
        table.seats[..used].iter().enumerate().any(|(index, seat)| {
            index != self.index
                && seat.taken.load(Ordering::Acquire) != 0
                && seat.accepting.load(Ordering::Relaxed) != 0
                && seat.connections.load(Ordering::Relaxed) + MARGIN <= mine
        })
    }
}

impl WorkerSeat {
    /// A connection left to the others waited [`MAX_DEFER`] and is still
    /// there: take connections as they come for [`IGNORE_PEERS_FOR`].
    pub(crate) fn peers_too_slow(&self) {
        *self.ignore_peers_until.lock() = Some(Instant::now() + IGNORE_PEERS_FOR);
        tracing::debug!(
            "A connection left to a worker with fewer open waited {}ms untaken; \
             accepting as connections come for {}s",
            MAX_DEFER.as_millis(),
            IGNORE_PEERS_FOR.as_secs()
        );
    }
}

/// One connection counted in its worker's seat.
pub(crate) struct HeldConnection(Arc<WorkerSeat>);

impl Drop for HeldConnection {
    fn drop(&mut self) {
        self.0.seat().connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_side(supervisor: &Balance, seat: &TakenSeat) -> Arc<WorkerSeat> {
        // SAFETY: dup returns a new descriptor for the worker side to own.
        let dup = unsafe { libc::dup(supervisor.fd()) };
        Arc::new(
            Arc::new(Balance::inherit(dup).unwrap())
                .seat(seat.index())
                .unwrap(),
        )
    }

    fn holding(seat: &Arc<WorkerSeat>, count: usize) -> Vec<HeldConnection> {
        (0..count).map(|_| seat.hold()).collect()
    }

    #[test]
    fn a_worker_defers_only_to_an_accepting_worker_margin_connections_below_it() {
        let table = Arc::new(Balance::create().unwrap());
        let (a, b) = (table.take_seat().unwrap(), table.take_seat().unwrap());
        let (busy, idle) = (worker_side(&table, &a), worker_side(&table, &b));
        busy.set_accepting(true);
        let _busy = holding(&busy, 5);
        let mut idle_held = holding(&idle, 3);
        // The idle one is not accepting yet (booting, or its loop is blocked).
        assert!(!busy.should_defer());
        idle.set_accepting(true);
        assert!(busy.should_defer());
        assert!(!idle.should_defer());
        // A lead of one is left to the race.
        idle_held.push(idle.hold());
        assert!(!busy.should_defer());
        // Connections that close count no more.
        idle_held.truncate(1);
        assert!(busy.should_defer());
    }

    #[test]
    fn peers_that_let_a_connection_wait_are_ignored_for_a_while() {
        let table = Arc::new(Balance::create().unwrap());
        let (a, b) = (table.take_seat().unwrap(), table.take_seat().unwrap());
        let (busy, stuck) = (worker_side(&table, &a), worker_side(&table, &b));
        let _busy = holding(&busy, 4);
        stuck.set_accepting(true);
        assert!(busy.should_defer());
        busy.peers_too_slow();
        assert!(!busy.should_defer());
        *busy.ignore_peers_until.lock() = Some(Instant::now());
        assert!(busy.should_defer());
    }

    #[test]
    fn a_freed_seat_counts_for_nothing_and_is_taken_again() {
        let table = Arc::new(Balance::create().unwrap());
        let (a, b) = (table.take_seat().unwrap(), table.take_seat().unwrap());
        let busy = worker_side(&table, &a);
        let gone = worker_side(&table, &b);
        busy.set_accepting(true);
        let _busy = holding(&busy, 10);
        let _gone = holding(&gone, 0);
        gone.set_accepting(true);
        assert!(busy.should_defer());
        // Killed with -9 and reaped: it never said it stopped accepting.
        let freed = b.index();
        drop(b);
        assert!(!busy.should_defer());
        assert_eq!(table.take_seat().unwrap().index(), freed);
    }

    #[test]
    fn every_seat_taken_leaves_a_worker_without_one() {
        let table = Arc::new(Balance::create().unwrap());
        let seats: Vec<_> = (0..SEATS).map(|_| table.take_seat().unwrap()).collect();
        assert!(table.take_seat().is_none());
        drop(seats);
        assert!(table.take_seat().is_some());
    }
}
