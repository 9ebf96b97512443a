//! The simulated NIC: a [`Fabric`] owns the devices of this process, their queue pairs and
//! memory registrations, and the event-driven RC engine that moves packets between them.
//!
//! Modes:
//! - **inline** ([`Fabric::new`], [`Fabric::global`]): the engine runs in the calling thread
//!   right after each verbs call that creates work (so posting does the NIC's work, timed and
//!   accounted as NIC time), and a timer thread that sleeps until the next deadline handles
//!   retransmission and RNR timers. QPs connected to devices of other processes attach over
//!   shared memory (`shm/`: direct placement in the posting thread, no packets); where that is
//!   not possible their packets go over the socket wire (`wire.rs`).
//! - **deterministic** ([`Fabric::deterministic`]): nothing happens until the test calls
//!   [`Fabric::step`], [`Fabric::run_until_idle`] or [`Fabric::advance`]; time is virtual.

mod packet;
pub(crate) mod shm;
mod state;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

pub use packet::QpAddress;
pub use state::NetStats;

pub(crate) use state::{CqShared, CqState, DevState, Effects, MrEntry, State};

use crate::Gid;
use crate::sys::thread_cpu_time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Inline,
    Deterministic,
}

/// Settings of an inline-mode fabric.
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// Number of simulated devices.
    pub devices: usize,
    /// Seed of the fault-injection RNG (and of QP numbers and keys).
    pub seed: u64,
    /// Accept packets from, and send packets to, simulated devices of other processes.
    pub cross_process: bool,
}

impl Default for FabricConfig {
    fn default() -> Self {
        Self {
            devices: 2,
            seed: 0x5EED,
            cross_process: false,
        }
    }
}

/// Where the simulated NIC spent its effort.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Network counters (packets here are packets of the packet engine: in-process, or over
    /// the cross-process socket wire; shared-memory placements send none).
    pub net: NetStats,
    /// Time the packet engine ran inline in application threads (wall time of non-blocking
    /// work).
    pub inline_time: Duration,
    /// CPU time of the simulator's own threads (timers, cross-process wire).
    pub thread_cpu_time: Duration,
    /// Shared-memory mode: wall time of exactly the NIC's work of placements — payload copies
    /// into (or, for READ, out of) the peer's memory plus the completion-entry writes. Measured
    /// in the posting thread; not part of `inline_time`.
    pub placement_time: Duration,
    /// Shared-memory mode: work requests executed by direct placement.
    pub placements: u64,
    /// Shared-memory mode: payload bytes copied.
    pub bytes_placed: u64,
    /// Shared-memory mode: completion entries written into shared CQ rings (the peer's
    /// receive completions and this side's signaled send completions).
    pub cqes_written: u64,
    /// Completion-channel eventfd writes for shared CQ rings (only when the CQ was armed, or
    /// on overflow): the only system call of the shared-memory data path.
    pub doorbells: u64,
    /// `req_notify` calls (arms) on this fabric's CQs.
    pub arms: u64,
}

impl NicStats {
    /// All NIC work: packet engine, simulator threads and direct placement.
    pub fn total(&self) -> Duration {
        self.inline_time + self.thread_cpu_time + self.placement_time
    }
}

/// A set of simulated devices and the network between them.
#[derive(Debug)]
pub struct Fabric {
    state: Mutex<StateCell>,
    timer_wake: Condvar,
    mode: Mode,
    epoch: Instant,
    virtual_now: AtomicU64,
    inline_ns: AtomicU64,
    thread_ns: AtomicU64,
    wire: OnceLock<wire::Wire>,
    /// Cross-process QPs attach over shared memory (else they use the socket wire).
    shm: AtomicBool,
    arms: AtomicU64,
}

/// `State` is not `Debug`; this keeps `Fabric: Debug` honest and cheap.
pub(crate) struct StateCell(pub State);

impl std::fmt::Debug for StateCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("qps", &self.0.qps.len())
            .field("mrs", &self.0.mrs.len())
            .finish()
    }
}

static GLOBAL: OnceLock<Arc<Fabric>> = OnceLock::new();
static FABRIC_IDS: AtomicU64 = AtomicU64::new(0);

fn device_gid(fabric_id: u8, index: u8) -> Gid {
    let pid = std::process::id().to_be_bytes();
    Gid([
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, b'r', b's', pid[0], pid[1], pid[2], pid[3], fabric_id, index,
    ])
}

impl Fabric {
    /// The process-wide fabric behind [`crate::devices`]: inline mode, cross-process enabled.
    /// `RDMA_SIM_DEVICES` (default 2) sets the device count, `RDMA_SIM_SEED` the seed.
    pub fn global() -> Arc<Fabric> {
        GLOBAL
            .get_or_init(|| {
                let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
                Fabric::new(FabricConfig {
                    devices: env("RDMA_SIM_DEVICES").unwrap_or(2) as usize,
                    seed: env("RDMA_SIM_SEED").unwrap_or(0x5EED),
                    cross_process: true,
                })
            })
            .clone()
    }

    /// The process-wide fabric if something has used it already (never creates it).
    pub fn global_if_started() -> Option<Arc<Fabric>> {
        GLOBAL.get().cloned()
    }

    /// A new inline-mode fabric.
    pub fn new(config: FabricConfig) -> Arc<Fabric> {
        let mut fabric = Self::build(Mode::Inline, config.devices, config.seed);
        if config.cross_process && std::env::var("RDMA_SIM_WIRE").as_deref() != Ok("socket") {
            *Arc::get_mut(&mut fabric)
                .expect("not shared yet")
                .shm
                .get_mut() = true;
        }
        let weak = Arc::downgrade(&fabric);
        std::thread::Builder::new()
            .name("rdma-sim-timer".into())
            .spawn(move || timer_thread(weak))
            .expect("spawn rdma-sim timer thread");
        if config.cross_process {
            let gids: Vec<Gid> = fabric.lock().0.devices.iter().map(|d| d.gid).collect();
            match wire::Wire::start(Arc::downgrade(&fabric), &gids) {
                Ok(w) => {
                    let _ = fabric.wire.set(w);
                }
                Err(e) => eprintln!("rdma-sim: cross-process wire unavailable: {e}"),
            }
            if fabric.shm.load(Relaxed)
                && let Err(e) = shm::start_control(Arc::downgrade(&fabric), &gids)
            {
                eprintln!("rdma-sim: shared-memory attach unavailable: {e}");
            }
        }
        fabric
    }

    /// A deterministic fabric stepped by the caller, with virtual time starting at 0.
    pub fn deterministic(seed: u64, devices: usize) -> Arc<Fabric> {
        Self::build(Mode::Deterministic, devices, seed)
    }

    fn build(mode: Mode, devices: usize, seed: u64) -> Arc<Fabric> {
        let id = FABRIC_IDS.fetch_add(1, Relaxed) as u8;
        let devs = (0..devices.clamp(1, 255))
            .map(|i| DevState {
                gid: device_gid(id, i as u8),
                name: format!("sim{i}"),
                async_events: Default::default(),
            })
            .collect();
        Arc::new(Fabric {
            state: Mutex::new(StateCell(State::new(devs, seed))),
            timer_wake: Condvar::new(),
            mode,
            epoch: Instant::now(),
            virtual_now: AtomicU64::new(0),
            inline_ns: AtomicU64::new(0),
            thread_ns: AtomicU64::new(0),
            wire: OnceLock::new(),
            shm: AtomicBool::new(false),
            arms: AtomicU64::new(0),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, StateCell> {
        self.state
            .lock()
            .expect("the simulated NIC state was poisoned by a panic in the simulator")
    }

    fn now_ns(&self) -> u64 {
        match self.mode {
            Mode::Inline => self.epoch.elapsed().as_nanos() as u64,
            Mode::Deterministic => self.virtual_now.load(Relaxed),
        }
    }

    /// Time since the fabric started (virtual in deterministic mode).
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }

    /// True for a fabric stepped by the caller.
    pub fn is_deterministic(&self) -> bool {
        self.mode == Mode::Deterministic
    }

    /// Runs `f` on the state; in inline mode the engine then handles everything due, timed as
    /// NIC work. Side effects (notifications, packets for other processes) follow the unlock.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State, u64, &mut Effects) -> R) -> R {
        self.with_state_accounted(true, f)
    }

    fn with_state_accounted<R>(
        &self,
        inline_accounting: bool,
        f: impl FnOnce(&mut State, u64, &mut Effects) -> R,
    ) -> R {
        let mut fx = Effects::default();
        let r = {
            let mut cell = self.lock();
            let now = self.now_ns();
            let r = f(&mut cell.0, now, &mut fx);
            if self.mode == Mode::Inline && cell.0.next_deadline_at(now).is_some_and(|d| d <= now) {
                let started = Instant::now();
                cell.0.run_due(now, &mut fx);
                if inline_accounting {
                    self.inline_ns
                        .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                }
            }
            r
        };
        self.apply_accounted(fx, inline_accounting);
        r
    }

    fn apply(&self, fx: Effects) {
        self.apply_accounted(fx, true);
    }

    fn apply_accounted(&self, fx: Effects, inline_accounting: bool) {
        for ch in &fx.notify {
            ch.signal();
        }
        if !fx.outbound.is_empty() {
            match self.wire.get() {
                Some(w) => {
                    let started = Instant::now();
                    w.send(fx.outbound);
                    if inline_accounting {
                        self.inline_ns
                            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                    }
                }
                None => {
                    // No route to another process: the packets are lost, as on a cut cable;
                    // the requester's retransmission timer turns that into RETRY_EXC_ERR.
                    let mut cell = self.lock();
                    cell.0.stats.dropped += fx.outbound.len() as u64;
                }
            }
        }
        if fx.timer_changed && self.mode == Mode::Inline {
            self.timer_wake.notify_one();
        }
    }

    pub(crate) fn inject_remote(&self, pkt: packet::Packet) {
        // Runs on a wire thread, whose CPU time is accounted as a whole.
        self.with_state_accounted(false, |st, _, fx| st.inject(pkt, fx));
    }

    pub(crate) fn add_thread_cpu(&self, d: Duration) {
        self.thread_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    // ----- deterministic control ------------------------------------------------------------

    /// Handles the next event, advancing virtual time to it. Returns false when idle.
    pub fn step(&self) -> bool {
        assert!(
            self.is_deterministic(),
            "step() needs a deterministic fabric"
        );
        let mut fx = Effects::default();
        let stepped = {
            let mut cell = self.lock();
            let now = self.now_ns();
            match cell.0.step(now, &mut fx) {
                Some(at) => {
                    self.virtual_now.fetch_max(at, Relaxed);
                    true
                }
                None => false,
            }
        };
        self.apply(fx);
        stepped
    }

    /// Handles events until none is left or `max_events` were handled; returns the count.
    /// Timers fire as virtual time jumps to them.
    pub fn run_until_idle(&self, max_events: usize) -> usize {
        let mut n = 0;
        while n < max_events && self.step() {
            n += 1;
        }
        n
    }

    /// Handles every event due at the current virtual time (without moving time); returns the
    /// count.
    pub fn run_due(&self) -> usize {
        assert!(
            self.is_deterministic(),
            "run_due() needs a deterministic fabric"
        );
        let mut n = 0;
        while self.next_event_at().is_some_and(|t| t <= self.now()) && self.step() {
            n += 1;
        }
        n
    }

    /// Moves virtual time forward by `d`, handling every event that falls due on the way.
    pub fn advance(&self, d: Duration) {
        assert!(
            self.is_deterministic(),
            "advance() needs a deterministic fabric"
        );
        let target = self.now_ns() + d.as_nanos() as u64;
        loop {
            let now = self.now_ns();
            let due = self.lock().0.next_deadline_at(now).filter(|t| *t <= target);
            if due.is_none() || !self.step() {
                break;
            }
        }
        self.virtual_now.fetch_max(target, Relaxed);
    }

    /// When the next event falls due, if any.
    pub fn next_event_at(&self) -> Option<Duration> {
        let now = self.now_ns();
        self.lock()
            .0
            .next_deadline_at(now)
            .map(Duration::from_nanos)
    }

    /// Events waiting to be handled.
    pub fn pending_events(&self) -> usize {
        self.lock().0.pending_events()
    }

    // ----- faults and statistics ------------------------------------------------------------

    /// Loses each packet with probability `p`.
    pub fn set_drop_rate(&self, p: f64) {
        self.lock().0.faults.drop_rate = p;
    }

    /// Delays every completion by a uniform draw from `range` (`None` to stop).
    pub fn set_completion_delay(&self, range: Option<(Duration, Duration)>) {
        self.lock().0.faults.completion_delay = range;
    }

    /// Takes a device's link down (every packet from or to it is lost) or up again.
    pub fn set_link_up(&self, gid: Gid, up: bool) {
        let mut cell = self.lock();
        if up {
            cell.0.faults.links_down.remove(&gid);
        } else {
            cell.0.faults.links_down.insert(gid);
        }
    }

    /// Where the NIC spent its effort so far.
    pub fn stats(&self) -> NicStats {
        let (net, s) = {
            let cell = self.lock();
            (cell.0.stats, cell.0.shm_stats)
        };
        NicStats {
            net,
            inline_time: Duration::from_nanos(self.inline_ns.load(Relaxed)),
            thread_cpu_time: Duration::from_nanos(self.thread_ns.load(Relaxed)),
            placement_time: Duration::from_nanos(s.placement_ns),
            placements: s.placements,
            bytes_placed: s.bytes_placed,
            cqes_written: s.cqes_written,
            doorbells: s.doorbells,
            arms: self.arms.load(Relaxed),
        }
    }

    /// True if QPs connected to another process attach over shared memory (a cross-process
    /// inline fabric, unless `RDMA_SIM_WIRE=socket` forces the socket wire).
    pub fn shm_enabled(&self) -> bool {
        self.shm.load(Relaxed) && self.mode == Mode::Inline && self.wire.get().is_some()
    }

    /// Turns attaching over shared memory off (or back on) for QPs connected from now on, on
    /// a cross-process fabric: with it off, new cross-process connections use the socket wire
    /// (as with `RDMA_SIM_WIRE=socket`), and attach requests from peers are refused. For
    /// comparisons in one run; attached QPs are not affected.
    pub fn set_shm_enabled(&self, on: bool) {
        self.shm.store(on, Relaxed);
    }

    pub(crate) fn count_arm(&self) {
        self.arms.fetch_add(1, Relaxed);
    }
}

/// Sleeps until the next deadline, handles what is due, and exits once the fabric is gone.
fn timer_thread(fabric: Weak<Fabric>) {
    loop {
        let Some(f) = fabric.upgrade() else {
            return;
        };
        let cpu0 = thread_cpu_time();
        let mut fx = Effects::default();
        {
            let mut cell = f.lock();
            let now = f.now_ns();
            match cell.0.next_deadline_at(now) {
                Some(d) if d <= now => {
                    cell.0.run_due(now, &mut fx);
                }
                next => {
                    let wait = next
                        .map(|d| Duration::from_nanos(d - now))
                        .unwrap_or(Duration::from_millis(100))
                        .min(Duration::from_millis(100));
                    let _ = f.timer_wake.wait_timeout(cell, wait);
                }
            }
        }
        f.apply_accounted(fx, false);
        f.add_thread_cpu(thread_cpu_time().saturating_sub(cpu0));
    }
}
