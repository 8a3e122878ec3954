//! The emulated kernel's state: the objects the KPIs hand out (opaque handles),
//! and the ledgers that fail a run — allocations, locks, mbufs, filters.
//!
//! Everything here is safe Rust over plain integers and byte vectors; the raw
//! pointers a kext passes are turned into these by [`super::abi`]. The state is
//! one per process, behind a mutex, and is reached through [`with`]; it is never
//! held while the kext runs, because the kext may call back into the KPIs from
//! its callbacks, and in the multi-threaded scenarios ([`mt`]) several
//! threads run the kext at once. The callback stack ([`push_context`]) is per
//! thread; a lock the kext holds names its owning thread, so a lock taken by
//! another thread blocks (as xnu's `lck_mtx`/`lck_rw` do) instead of counting
//! as recursion.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::thread::ThreadId;

use serde::{Deserialize, Serialize};

use self::events::{Event, Violation};
use self::fault::FaultPlan;

pub mod ctl;
pub mod events;
pub mod fault;
pub mod ipf;
pub mod mbuf;
pub mod mt;
pub mod packet;
pub mod sflt;

/// What kind of object an opaque handle names. Handles are non-canonical
/// addresses (`0xE…`), so a kext that dereferences one faults at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Mbuf = 1,
    Socket = 2,
    IpFilter = 3,
    LockGroup = 4,
    LockGroupAttr = 5,
    LockAttr = 6,
    Mutex = 7,
    RwLock = 8,
    SpinLock = 9,
    MallocTag = 10,
    KernCtl = 11,
}

const HANDLE_TAG: u64 = 0xE000_0000_0000_0000;

/// Makes the opaque pointer value for object `id` of `kind`.
pub fn handle(kind: Kind, id: u64) -> u64 {
    HANDLE_TAG | ((kind as u64) << 40) | (id << 4)
}

/// Decodes a handle made by [`handle`].
pub fn unhandle(h: u64, kind: Kind) -> Option<u64> {
    (h & 0xFF00_0000_0000_0000 == HANDLE_TAG && (h >> 40) & 0xFF == kind as u64 && h & 0xF == 0)
        .then_some((h >> 4) & 0xF_FFFF_FFFF)
}

/// An allocation the kext owns.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub size: usize,
    pub via: &'static str,
    pub during: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    Free,
    Held {
        during: String,
        exclusive: bool,
        owner: ThreadId,
    },
    Destroyed,
}

#[derive(Debug, Clone)]
pub struct Lock {
    pub kind: Kind,
    pub state: LockState,
    /// Threads holding it shared (one entry per hold).
    pub readers: Vec<ThreadId>,
}

/// What an attempt to take a lock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Taken.
    Got,
    /// Held by another thread: a blocking lock waits, a try-lock fails.
    Busy,
    /// A contract violation (recorded): not taken, and the caller must not wait.
    Refused,
}

/// One entry of the run's trace: what the emulator called and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub what: String,
    pub result: i64,
}

/// Deferred kernel work, delivered "asynchronously" between the kext's entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferred {
    SfUnregistered { handle: u32 },
    IpfDetach { id: u64 },
}

/// The whole emulated kernel.
#[derive(Default)]
pub struct Kernel {
    pub violations: Vec<Violation>,
    pub trace: Vec<Call>,
    pub log: Vec<String>,
    pub allocations: BTreeMap<u64, Allocation>,
    pub malloc_tags: BTreeMap<u64, String>,
    pub locks: BTreeMap<u64, Lock>,
    pub next_id: u64,
    pub deferred: VecDeque<Deferred>,
    pub mbufs: self::mbuf::Mbufs,
    pub sflt: self::sflt::SocketFilters,
    pub ipf: self::ipf::IpFilters,
    pub ctl: self::ctl::Controls,
    pub faults: FaultPlan,
    /// Code range of the loaded kext(s): `[start, end)` of executable segments, for callback checks.
    pub code: Vec<(u64, u64, String)>,
    /// Monotonic emulated clock, nanoseconds.
    pub clock_ns: u64,
    /// Kernel work due at an emulated time (another CPU finishing): delivered
    /// when the clock passes it (the kext waiting on the clock sees it happen),
    /// or with the rest of the deferred work between entry points.
    pub timed: Vec<(u64, Deferred)>,
    /// State of the deterministic `read_random` stream.
    pub random_state: u64,
    /// The current process (pid, name) `proc_selfpid`/`proc_name` report; `None`: the default client.
    pub current_proc: Option<(i32, String)>,
    /// Threads asleep in `msleep`: (channel, token), oldest first.
    pub sleepers: Vec<(u64, u64)>,
    /// Tokens of sleepers a `wakeup`/`wakeup_one` woke (each taken by its sleeper).
    pub woken: std::collections::BTreeSet<u64>,
}

static KERNEL: LazyLock<Mutex<Kernel>> = LazyLock::new(|| Mutex::new(Kernel::default()));

thread_local! {
    /// This thread's callback/entry-point stack, innermost last.
    static CONTEXT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// This thread's log text not yet ended by a newline.
    static PARTIAL: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Takes formatted text the kext logged (printf, IOLog); every complete line
/// becomes a log event, the rest waits for its newline or [`flush_log`].
pub fn log_text(s: &str) {
    PARTIAL.with(|p| {
        let mut p = p.borrow_mut();
        p.push_str(s);
        while let Some(i) = p.find('\n') {
            let line: String = p.drain(..=i).collect();
            with(|k| k.log_line(line.trim_end_matches('\n')));
        }
    });
}

/// Emits a pending partial log line (text without a newline) as a line.
pub fn flush_log() {
    let rest = PARTIAL.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if !rest.is_empty() {
        with(|k| k.log_line(&rest));
    }
}

/// Runs `f` with the kernel state (one thread at a time). Never call into the
/// kext from inside `f`, and never call `with` again from inside it.
pub fn with<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    // A panic inside `f` (an emulator bug) fails the scenario anyway; the
    // state stays usable for the report.
    let mut k = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut k)
}

/// Enters a callback or entry point on this thread.
pub fn push_context(what: &str) {
    CONTEXT.with(|c| c.borrow_mut().push(what.to_string()));
}

/// Leaves the innermost callback or entry point of this thread.
pub fn pop_context() {
    CONTEXT.with(|c| c.borrow_mut().pop());
}

/// The innermost callback of this thread (`emulator` outside callbacks).
pub fn current_context() -> String {
    CONTEXT
        .with(|c| c.borrow().last().cloned())
        .unwrap_or_else(|| "emulator".into())
}

/// Replaces the kernel state with a fresh one (a new scenario).
pub fn reset(faults: FaultPlan) {
    with(|k| {
        *k = Kernel {
            faults,
            clock_ns: 1_000_000_000,
            random_state: 0x5052_5800,
            ..Kernel::default()
        };
    });
}

impl Kernel {
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The innermost running entry point or callback (of the calling thread).
    pub fn during(&self) -> String {
        current_context()
    }

    pub fn violation(&mut self, rule: &str, detail: impl Into<String>) {
        let v = Violation {
            rule: rule.into(),
            during: self.during(),
            detail: detail.into(),
        };
        events::emit(&Event::Violation(v.clone()));
        self.violations.push(v);
    }

    pub fn log_line(&mut self, text: &str) {
        events::emit(&Event::Log {
            text: text.to_string(),
        });
        self.log.push(text.to_string());
    }

    pub fn record(&mut self, what: impl Into<String>, result: i64) {
        self.trace.push(Call {
            what: what.into(),
            result,
        });
    }

    /// Whether `addr` is inside a loaded kext's executable segment.
    pub fn is_kext_code(&self, addr: u64) -> bool {
        self.code.iter().any(|&(s, e, _)| s <= addr && addr < e)
    }

    // ---- memory ----

    pub fn note_alloc(&mut self, addr: u64, size: usize, via: &'static str) {
        let during = self.during();
        self.allocations
            .insert(addr, Allocation { size, via, during });
    }

    /// Records a free of `addr`; `size` is checked when the KPI passes one.
    pub fn note_free(&mut self, addr: u64, size: Option<usize>, via: &'static str) -> bool {
        match self.allocations.remove(&addr) {
            Some(a) => {
                if let Some(s) = size.filter(|&s| s != a.size) {
                    self.violation(
                        "free-size-mismatch",
                        format!(
                            "{via}({addr:#x}, {s}) but {} allocated {} bytes",
                            a.via, a.size
                        ),
                    );
                }
                true
            }
            None => {
                self.violation(
                    "free-unknown",
                    format!(
                        "{via}({addr:#x}): not a live allocation (double free or foreign pointer)"
                    ),
                );
                false
            }
        }
    }

    // ---- locks ----

    pub fn new_lock(&mut self, kind: Kind) -> u64 {
        let id = self.new_id();
        self.locks.insert(
            id,
            Lock {
                kind,
                state: LockState::Free,
                readers: Vec::new(),
            },
        );
        handle(kind, id)
    }

    fn lock_mut(&mut self, h: u64, kind: Kind, op: &str) -> Option<u64> {
        let id = unhandle(h, kind).filter(|id| self.locks.contains_key(id));
        if id.is_none() {
            self.violation(
                "lock-bad-handle",
                format!("{op}({h:#x}): not a {kind:?} made by the KPI"),
            );
        }
        id
    }

    /// Takes lock `h` for the calling thread, or says it is another thread's.
    pub fn lock_acquire(&mut self, h: u64, kind: Kind, exclusive: bool, op: &str) -> Acquire {
        let Some(id) = self.lock_mut(h, kind, op) else {
            return Acquire::Refused;
        };
        let during = self.during();
        let me = std::thread::current().id();
        let Some(l) = self.locks.get_mut(&id) else {
            return Acquire::Refused;
        };
        match l.state.clone() {
            LockState::Destroyed => {
                self.violation(
                    "lock-use-after-free",
                    format!("{op}: {kind:?} #{id} was freed"),
                );
                Acquire::Refused
            }
            LockState::Held {
                during: held,
                owner,
                ..
            } if owner == me => {
                self.violation(
                    "lock-recursion",
                    format!("{op}: {kind:?} #{id} is already held (taken in {held}); on a real kernel this deadlocks or panics"),
                );
                Acquire::Refused
            }
            LockState::Held { .. } => Acquire::Busy,
            LockState::Free if exclusive && l.readers.contains(&me) => {
                self.violation(
                    "lock-recursion",
                    format!("{op}: {kind:?} #{id} is held shared by this thread; taking it exclusive deadlocks on a real kernel"),
                );
                Acquire::Refused
            }
            LockState::Free if exclusive && !l.readers.is_empty() => Acquire::Busy,
            LockState::Free => {
                if exclusive {
                    l.state = LockState::Held {
                        during,
                        exclusive,
                        owner: me,
                    };
                    self.sflt.watch.note_lock(id);
                } else {
                    l.readers.push(me);
                }
                Acquire::Got
            }
        }
    }

    /// Whether the calling thread holds the lock with handle `h`.
    pub fn holds(&self, h: u64, kind: Kind) -> bool {
        let me = std::thread::current().id();
        unhandle(h, kind)
            .and_then(|id| self.locks.get(&id))
            .is_some_and(|l| matches!(&l.state, LockState::Held { owner, .. } if *owner == me))
    }

    /// Wakes the sleepers on `chan` (at most one if `one`); how many.
    pub fn wake(&mut self, chan: u64, one: bool) -> usize {
        let mut n = 0;
        while let Some(i) = self.sleepers.iter().position(|s| s.0 == chan) {
            let (_, token) = self.sleepers.remove(i);
            self.woken.insert(token);
            n += 1;
            if one {
                break;
            }
        }
        n
    }

    pub fn lock_release(&mut self, h: u64, kind: Kind, op: &str) {
        let Some(id) = self.lock_mut(h, kind, op) else {
            return;
        };
        let me = std::thread::current().id();
        let Some(l) = self.locks.get_mut(&id) else {
            return;
        };
        match &l.state {
            LockState::Held { owner, .. } if *owner == me => l.state = LockState::Free,
            LockState::Held { during, .. } => {
                let during = during.clone();
                self.violation(
                    "lock-not-owner",
                    format!("{op}: {kind:?} #{id} is held by another thread (taken in {during})"),
                )
            }
            LockState::Free => match l.readers.iter().position(|t| *t == me) {
                Some(i) => {
                    l.readers.swap_remove(i);
                }
                None => {
                    self.violation("lock-not-held", format!("{op}: {kind:?} #{id} is not held"))
                }
            },
            LockState::Destroyed => self.violation(
                "lock-use-after-free",
                format!("{op}: {kind:?} #{id} was freed"),
            ),
        }
    }

    pub fn lock_free(&mut self, h: u64, kind: Kind, op: &str) {
        let Some(id) = self.lock_mut(h, kind, op) else {
            return;
        };
        let Some(l) = self.locks.get_mut(&id) else {
            return;
        };
        let was = std::mem::replace(&mut l.state, LockState::Destroyed);
        let readers = l.readers.len();
        match was {
            LockState::Destroyed => self.violation(
                "lock-double-free",
                format!("{op}: {kind:?} #{id} was already freed"),
            ),
            LockState::Held { during, .. } => self.violation(
                "lock-freed-while-held",
                format!("{op}: {kind:?} #{id} freed while held (taken in {during})"),
            ),
            LockState::Free if readers > 0 => self.violation(
                "lock-freed-while-held",
                format!("{op}: {kind:?} #{id} freed with {readers} reader(s)"),
            ),
            LockState::Free => {}
        }
    }

    /// Locks (not groups/attributes) held right now by `thread` (any thread
    /// for `None`), described.
    pub fn held_locks_by(&self, thread: Option<ThreadId>) -> Vec<String> {
        self.locks
            .iter()
            .filter_map(|(id, l)| match &l.state {
                LockState::Held { during, owner, .. } if thread.is_none_or(|t| t == *owner) => {
                    Some(format!("{:?} #{id} (taken in {during})", l.kind))
                }
                LockState::Free => {
                    let n = l
                        .readers
                        .iter()
                        .filter(|r| thread.is_none_or(|t| t == **r))
                        .count();
                    (n > 0).then(|| format!("{:?} #{id} ({n} reader(s))", l.kind))
                }
                _ => None,
            })
            .collect()
    }

    /// Locks (not groups/attributes) held right now, by any thread, described.
    pub fn held_locks(&self) -> Vec<String> {
        self.held_locks_by(None)
    }

    /// Ids of the exclusive locks the calling thread holds right now.
    pub fn my_exclusive_locks(&self) -> Vec<u64> {
        let me = std::thread::current().id();
        self.locks
            .iter()
            .filter(|(_, l)| matches!(&l.state, LockState::Held { owner, .. } if *owner == me))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Lock objects (groups, attributes, locks) never freed.
    pub fn leaked_locks(&self) -> Vec<String> {
        self.locks
            .iter()
            .filter(|(_, l)| l.state != LockState::Destroyed)
            .map(|(id, l)| format!("{:?} #{id}", l.kind))
            .collect()
    }
}

/// Checks run when control returns from the kext to the "stack" (after every
/// callback and entry point): no lock may be held.
pub fn check_return(k: &mut Kernel, what: &str) {
    let me = std::thread::current().id();
    let held = k.held_locks_by(Some(me));
    if !held.is_empty() {
        k.violation(
            "lock-held-on-return",
            format!("{what} returned with {} held", held.join(", ")),
        );
        // Release them so one mistake is reported once, not at every later return.
        for l in k.locks.values_mut() {
            if matches!(&l.state, LockState::Held { owner, .. } if *owner == me) {
                l.state = LockState::Free;
            }
            l.readers.retain(|r| *r != me);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel state is one per process: tests that reset it run one at a time.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn handles_round_trip_and_are_non_canonical() {
        let h = handle(Kind::Mbuf, 42);
        assert_eq!(unhandle(h, Kind::Mbuf), Some(42));
        assert_eq!(unhandle(h, Kind::Socket), None);
        assert_eq!(unhandle(0x7fff_0000_1000, Kind::Mbuf), None);
        assert!(
            h >> 47 != 0 && h >> 47 != 0x1ffff,
            "must not be a canonical user or kernel address"
        );
    }

    #[test]
    fn lock_ledger_reports_recursion_held_on_return_and_free_while_held() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        reset(FaultPlan::default());
        with(|k| {
            push_context("start");
            let m = k.new_lock(Kind::Mutex);
            assert_eq!(
                k.lock_acquire(m, Kind::Mutex, true, "lck_mtx_lock"),
                Acquire::Got
            );
            assert_eq!(
                k.lock_acquire(m, Kind::Mutex, true, "lck_mtx_lock"),
                Acquire::Refused
            );
            check_return(k, "start");
            k.lock_release(m, Kind::Mutex, "lck_mtx_unlock");
            assert_eq!(
                k.lock_acquire(m, Kind::Mutex, true, "lck_mtx_lock"),
                Acquire::Got
            );
            k.lock_free(m, Kind::Mutex, "lck_mtx_free");
            pop_context();
            let rules: Vec<&str> = k.violations.iter().map(|v| v.rule.as_str()).collect();
            assert_eq!(
                rules,
                [
                    "lock-recursion",
                    "lock-held-on-return",
                    "lock-not-held",
                    "lock-freed-while-held"
                ]
            );
        });
    }

    #[test]
    fn memory_ledger_catches_double_free_and_size_mismatch() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        reset(FaultPlan::default());
        with(|k| {
            k.note_alloc(0x1000, 16, "OSMalloc");
            assert!(k.note_free(0x1000, Some(32), "OSFree"));
            assert!(!k.note_free(0x1000, Some(16), "OSFree"));
            let rules: Vec<&str> = k.violations.iter().map(|v| v.rule.as_str()).collect();
            assert_eq!(rules, ["free-size-mismatch", "free-unknown"]);
        });
    }
}
