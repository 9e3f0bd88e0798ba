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
//! A worker that leaves [`STRIKES`] connections in a row, within
//! [`STRIKES_WITHIN`], to a peer which accepts none of them nor any other
//! connection meanwhile takes that peer for stuck (stopped, or out of file
//! descriptors while it still says it accepts) and leaves it nothing for
//! [`IGNORE_STUCK_FOR`]. One missed connection is not enough:
//! on a busy machine a worker that is fine can wait on the run queue for
//! longer than [`MAX_DEFER`], and ignoring it for a second then gave the
//! other worker every connection of that second.
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

/// Connections left in a row to a peer that accepted none of them before a
/// worker takes that peer for stuck.
const STRIKES: u32 = 3;

/// How close together those connections must come: misses far apart, with
/// no connection to take between them, say nothing of the peer.
const STRIKES_WITHIN: Duration = Duration::from_secs(1);

/// How long a worker leaves nothing to a peer it takes for stuck: one that
/// looks ready but is not (stopped, out of file descriptors) must not slow
/// every accept of the others.
const IGNORE_STUCK_FOR: Duration = Duration::from_secs(1);

#[repr(C)]
struct Seat {
    /// While a worker process holds the seat, a generation number unique
    /// over the table's life (never 0); 0 while free. The supervisor's.
    taken: AtomicU64,
    /// Non-zero while the worker accepts connections (the worker's).
    accepting: AtomicU64,
    /// The worker's open connections (the worker's).
    connections: AtomicU64,
    /// Connections the worker has accepted (the worker's): whether it took
    /// any lately tells a slow peer from a stuck one.
    accepted: AtomicU64,
    /// The worker's process id, for log lines about it (the worker's).
    pid: AtomicU64,
}

#[repr(C)]
struct Table {
    /// One more than the highest seat ever taken: readers look no further.
    used: AtomicU64,
    /// Seats taken so far: the last generation given out in [`Seat::taken`].
    generations: AtomicU64,
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
        seat.accepted.store(0, Ordering::Relaxed);
        seat.pid.store(0, Ordering::Relaxed);
        let generation = table.generations.fetch_add(1, Ordering::Relaxed) + 1;
        seat.taken.store(generation, Ordering::Release);
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
        let seat = self.table().seats.get(index)?;
        seat.pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        Some(WorkerSeat {
            balance: self,
            index,
            missed: Mutex::new(Vec::new()),
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
    /// The peers that lately let a connection left to them wait untaken
    /// (usually none, so a list).
    missed: Mutex<Vec<Missed>>,
}

/// What a worker remembers of a peer that let connections wait untaken.
struct Missed {
    /// The peer's seat, and its generation ([`Seat::taken`]): a new worker
    /// in the seat starts with a clean record.
    index: usize,
    generation: u64,
    /// Connections left untaken in a row, the peer's accepts when the last
    /// one was, and when: if those accepts grew, or the last miss is older
    /// than [`STRIKES_WITHIN`], the row starts again.
    strikes: u32,
    accepted: u64,
    last_strike: Instant,
    /// Set once the row reached [`STRIKES`]: the peer is left nothing until then.
    ignored_until: Option<Instant>,
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

    /// Counts a connection this worker accepted.
    pub(crate) fn took_connection(&self) {
        self.seat().accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether another worker that is accepting, and not taken for stuck,
    /// has [`MARGIN`] or more connections fewer than this one.
    pub(crate) fn should_defer(&self) -> bool {
        let mine = self.seat().connections.load(Ordering::Relaxed);
        if mine < MARGIN {
            return false;
        }
        let table = self.balance.table();
        let missed = self.missed.lock();
        let now = Instant::now();
        self.deferring_to(mine).any(|(index, _)| {
            !missed.iter().any(|peer| {
                peer.index == index
                    && peer.is_current(table)
                    && peer.ignored_until.is_some_and(|until| now < until)
            })
        })
    }

    /// The other seats of workers that accept and have [`MARGIN`] or more
    /// connections fewer than `mine`.
    fn deferring_to(&self, mine: u64) -> impl Iterator<Item = (usize, &Seat)> {
        let table = self.balance.table();
        let used = (table.used.load(Ordering::Acquire) as usize).min(SEATS);
        table.seats[..used]
            .iter()
            .enumerate()
            .filter(move |&(index, seat)| {
                index != self.index
                    && seat.taken.load(Ordering::Acquire) != 0
                    && seat.accepting.load(Ordering::Relaxed) != 0
                    && seat.connections.load(Ordering::Relaxed) + MARGIN <= mine
            })
    }

    /// This worker took a connection it had left to the others for
    /// [`MAX_DEFER`]: counts a strike against each peer it was left to, and
    /// leaves nothing for [`IGNORE_STUCK_FOR`] to one that accepted no
    /// connection over [`STRIKES`] in a row.
    pub(crate) fn left_untaken(&self) {
        let mine = self.seat().connections.load(Ordering::Relaxed);
        let now = Instant::now();
        let table = self.balance.table();
        let mut missed = self.missed.lock();
        // Forget the workers that left their seat, and ignoring that ended.
        missed.retain(|peer| {
            peer.is_current(table) && peer.ignored_until.is_none_or(|until| now < until)
        });
        for (index, seat) in self.deferring_to(mine) {
            let accepted = seat.accepted.load(Ordering::Relaxed);
            let at = match missed.iter().position(|peer| peer.index == index) {
                Some(at) => at,
                None => {
                    missed.push(Missed {
                        index,
                        generation: seat.taken.load(Ordering::Acquire),
                        strikes: 0,
                        accepted,
                        last_strike: now,
                        ignored_until: None,
                    });
                    missed.len() - 1
                }
            };
            let peer = &mut missed[at];
            if peer.ignored_until.is_some() {
                continue;
            }
            if peer.accepted != accepted || now - peer.last_strike > STRIKES_WITHIN {
                // It took connections since its last miss (slow, not stuck),
                // or that miss was long ago.
                peer.strikes = 0;
                peer.accepted = accepted;
            }
            peer.strikes += 1;
            peer.last_strike = now;
            let pid = seat.pid.load(Ordering::Relaxed);
            if peer.strikes < STRIKES {
                tracing::debug!(
                    "A connection left to worker pid {pid} (it has fewer open) waited {}ms \
                     untaken; took it here",
                    MAX_DEFER.as_millis()
                );
                continue;
            }
            peer.ignored_until = Some(now + IGNORE_STUCK_FOR);
            tracing::debug!(
                "Worker pid {pid} took none of the last {STRIKES} connections left to it \
                 within {}ms each; leaving it none for {}s",
                MAX_DEFER.as_millis(),
                IGNORE_STUCK_FOR.as_secs()
            );
        }
    }
}

impl Missed {
    /// Whether the worker this record is of still holds its seat.
    fn is_current(&self, table: &Table) -> bool {
        table.seats[self.index].taken.load(Ordering::Acquire) == self.generation
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

    /// Two workers: a busy one with 4 connections open, and an accepting
    /// peer with none, which the busy one defers to.
    struct BusyAndPeer {
        table: Arc<Balance>,
        busy: Arc<WorkerSeat>,
        peer: Arc<WorkerSeat>,
        peer_seat: TakenSeat,
        _busy_seat: TakenSeat,
        _held: Vec<HeldConnection>,
    }

    fn busy_and_peer() -> BusyAndPeer {
        let table = Arc::new(Balance::create().unwrap());
        let (busy_seat, peer_seat) = (table.take_seat().unwrap(), table.take_seat().unwrap());
        let (busy, peer) = (
            worker_side(&table, &busy_seat),
            worker_side(&table, &peer_seat),
        );
        let held = holding(&busy, 4);
        peer.set_accepting(true);
        BusyAndPeer {
            table,
            busy,
            peer,
            peer_seat,
            _busy_seat: busy_seat,
            _held: held,
        }
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
    fn a_peer_that_takes_none_of_three_connections_in_a_row_is_left_none_for_a_while() {
        let BusyAndPeer { busy, .. } = &busy_and_peer();
        for _ in 1..STRIKES {
            assert!(busy.should_defer());
            busy.left_untaken();
        }
        assert!(busy.should_defer());
        busy.left_untaken();
        assert!(!busy.should_defer());
        // Once the time is up it gets connections again, and a clean record.
        busy.missed.lock()[0].ignored_until = Some(Instant::now());
        assert!(busy.should_defer());
        busy.left_untaken();
        assert!(busy.should_defer());
        assert_eq!(busy.missed.lock()[0].strikes, 1);
    }

    #[test]
    fn a_slow_peer_that_accepts_between_misses_is_not_taken_for_stuck() {
        let BusyAndPeer {
            busy, peer: slow, ..
        } = &busy_and_peer();
        for _ in 0..4 {
            for _ in 1..STRIKES {
                busy.left_untaken();
            }
            // Late, but it ran and took one: the row of misses starts again.
            slow.took_connection();
            assert!(busy.should_defer());
        }
        for _ in 0..STRIKES {
            busy.left_untaken();
        }
        assert!(!busy.should_defer());
    }

    #[test]
    fn misses_far_apart_do_not_make_a_peer_stuck() {
        let BusyAndPeer { busy, .. } = &busy_and_peer();
        for _ in 1..STRIKES {
            busy.left_untaken();
        }
        // No connection came for a while, so the quiet one took none.
        busy.missed.lock()[0].last_strike -= STRIKES_WITHIN + Duration::from_millis(1);
        busy.left_untaken();
        assert!(busy.should_defer());
        assert_eq!(busy.missed.lock()[0].strikes, 1);
    }

    #[test]
    fn strikes_count_against_the_peers_left_the_connection_only() {
        let table = Arc::new(Balance::create().unwrap());
        let seats: Vec<_> = (0..3).map(|_| table.take_seat().unwrap()).collect();
        let [busy, stuck, other] = [0, 1, 2].map(|i| worker_side(&table, &seats[i]));
        let _busy = holding(&busy, 6);
        let other_held = holding(&other, 5);
        stuck.set_accepting(true);
        other.set_accepting(true);
        for _ in 0..STRIKES {
            busy.left_untaken();
        }
        // The stuck one is left nothing. The other, never left a connection
        // (it had too many), has no strikes, and is left them once it has fewer.
        assert!(!busy.should_defer());
        drop(other_held);
        assert!(busy.should_defer());
    }

    #[test]
    fn a_new_worker_in_a_freed_seat_starts_with_a_clean_record() {
        // Moved out of `pair`, which keeps the busy worker's connections open.
        let pair = busy_and_peer();
        let BusyAndPeer {
            table,
            busy,
            peer_seat,
            ..
        } = pair;
        for _ in 0..STRIKES {
            busy.left_untaken();
        }
        assert!(!busy.should_defer());
        // Killed and replaced: the new worker gets the same seat.
        let index = peer_seat.index();
        drop(peer_seat);
        let b = table.take_seat().unwrap();
        assert_eq!(b.index(), index);
        worker_side(&table, &b).set_accepting(true);
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
