//! The multi-threaded mode of the emulator: callbacks delivered from several
//! threads at once (as xnu's CPUs do), with preemption points inside the kext's
//! lock operations.
//!
//! - [`enable`] switches it on for a scenario (seeded: the preemption choices of
//!   each thread come from a generator seeded from the run's seed and the
//!   thread's index, [`thread_seed`]).
//! - [`point`] is a preemption point: the calling thread yields its CPU (often)
//!   or sleeps 10-110 µs (rarely), so another thread runs while this one is
//!   about to take a lock, has just taken it, or is about to release it. The
//!   lock KPIs (`lck_mtx_*`, `lck_rw_*`; not `lck_spin_*`, which disable
//!   preemption on xnu) call it; so does the clock.
//! - [`wait`]: how a blocking lock waits for another thread's holder.
//! - `lock-skip` fault plans: [`skip_lock`]/[`skipped_unlock`] turn a lock and
//!   its unlock into no-ops (a planted race).
//!
//! Counters ([`stats`]) say how often threads were preempted and how often a
//! lock was found held by another thread, so a run shows contention happened.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::fault::FaultPoint;
use super::{self as kernel};

static ON: AtomicBool = AtomicBool::new(false);
static SEED: AtomicU64 = AtomicU64::new(0);
static PREEMPTIONS: AtomicU64 = AtomicU64::new(0);
static CONTENDED: AtomicU64 = AtomicU64::new(0);
static SLEEPS: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static MAX_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// Locks this thread "took" under `lock-skip` (their unlocks are skipped too).
    static SKIPPED_HELD: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Switches the multi-threaded mode on, with `seed` for the preemption choices.
pub fn enable(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
    ON.store(true, Ordering::SeqCst);
}

/// Switches it off (single-threaded scenarios never see a preemption point).
pub fn disable() {
    ON.store(false, Ordering::SeqCst);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Seeds the calling thread's generator: thread `index` of the run.
pub fn thread_seed(index: u64) {
    let s = SEED.load(Ordering::Relaxed) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    RNG.with(|r| r.set(s | 1));
}

fn next() -> u64 {
    RNG.with(|r| {
        // xorshift64*
        let mut x = r.get().max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A preemption point (see the module documentation). Nothing happens outside
/// the multi-threaded mode.
pub fn point() {
    if !enabled() {
        return;
    }
    let r = next();
    match r % 64 {
        0..=15 => {
            PREEMPTIONS.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
        }
        16 => {
            PREEMPTIONS.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(10 + (r >> 8) % 100));
        }
        _ => {}
    }
}

/// One round of waiting for a lock held by another thread.
pub fn wait(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    if *spins < 32 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Records that a lock was found held by another thread (and waited for).
pub fn note_contended() {
    CONTENDED.fetch_add(1, Ordering::Relaxed);
}

/// Records a sleep (`msleep`): a thread waited to be woken.
pub fn note_sleep() {
    SLEEPS.fetch_add(1, Ordering::Relaxed);
}

/// Sleeps (`msleep`) so far.
pub fn sleeps() -> u64 {
    SLEEPS.load(Ordering::Relaxed)
}

/// Whether a `lock-skip` fault plan makes this lock call a no-op.
pub fn skip_lock(h: u64, op: &str) -> bool {
    let skip = kernel::with(|k| {
        let s = k.faults.should_fail(FaultPoint::LockSkip);
        if s {
            k.record(format!("{op}({h:#x}) skipped (lock-skip)"), 0);
        }
        s
    });
    if skip {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        SKIPPED_HELD.with(|v| v.borrow_mut().push(h));
    }
    skip
}

/// Whether this unlock matches a skipped lock (and is skipped too).
pub fn skipped_unlock(h: u64) -> bool {
    SKIPPED_HELD.with(|v| {
        let mut v = v.borrow_mut();
        match v.iter().rposition(|x| *x == h) {
            Some(i) => {
                v.remove(i);
                true
            }
            None => false,
        }
    })
}

/// A callback into the kext begins (any thread): counts callbacks that began
/// while another was running, and the most running at once.
pub fn callback_begins() {
    let n = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    if n > 1 {
        OVERLAPPED.fetch_add(1, Ordering::Relaxed);
    }
    MAX_IN_FLIGHT.fetch_max(n, Ordering::Relaxed);
}

/// A callback into the kext returned.
pub fn callback_ends() {
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// (callbacks that began while another ran, most callbacks running at once).
pub fn overlap() -> (u64, u64) {
    (
        OVERLAPPED.load(Ordering::Relaxed),
        MAX_IN_FLIGHT.load(Ordering::Relaxed),
    )
}

/// (preemptions, contended lock acquisitions, skipped lock calls) so far.
pub fn stats() -> (u64, u64, u64) {
    (
        PREEMPTIONS.load(Ordering::Relaxed),
        CONTENDED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed),
    )
}
