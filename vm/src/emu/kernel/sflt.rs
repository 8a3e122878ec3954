//! Socket filters (`sflt_register`/`sflt_unregister`, xnu bsd/sys/kpi_socketfilter.h):
//! the registrations the kext made and the emulated sockets they attach to.

use std::collections::BTreeMap;

/// `struct sflt_filter` (LP64, 192 bytes) as the kernel copies it at registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfltFilter {
    pub handle: u32,
    pub flags: i32,
    pub name: u64,
    pub unregistered: u64,
    pub attach: u64,
    pub detach: u64,
    pub notify: u64,
    pub getpeername: u64,
    pub getsockname: u64,
    pub data_in: u64,
    pub data_out: u64,
    pub connect_in: u64,
    pub connect_out: u64,
    pub bind: u64,
    pub setoption: u64,
    pub getoption: u64,
    pub listen: u64,
    pub ioctl: u64,
    pub ext_len: u32,
    pub accept: u64,
    pub ext_reserved_nonzero: bool,
}

pub const SFLT_GLOBAL: i32 = 0x01;
pub const SFLT_PROG: i32 = 0x02;
pub const SFLT_EXTENDED: i32 = 0x04;

impl SfltFilter {
    pub const SIZE: usize = 192;

    /// Decodes the 192 bytes of a `struct sflt_filter`.
    pub fn parse(b: &[u8; Self::SIZE]) -> Self {
        let q = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let d = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        SfltFilter {
            handle: d(0),
            flags: d(4) as i32,
            name: q(8),
            unregistered: q(16),
            attach: q(24),
            detach: q(32),
            notify: q(40),
            getpeername: q(48),
            getsockname: q(56),
            data_in: q(64),
            data_out: q(72),
            connect_in: q(80),
            connect_out: q(88),
            bind: q(96),
            setoption: q(104),
            getoption: q(112),
            listen: q(120),
            ioctl: q(128),
            ext_len: d(136),
            accept: q(144),
            ext_reserved_nonzero: (152..192).step_by(8).any(|o| q(o) != 0),
        }
    }

    /// The non-NULL callback pointers, named, for "is it in the kext's code" checks.
    pub fn callbacks(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("sf_unregistered", self.unregistered),
            ("sf_attach", self.attach),
            ("sf_detach", self.detach),
            ("sf_notify", self.notify),
            ("sf_getpeername", self.getpeername),
            ("sf_getsockname", self.getsockname),
            ("sf_data_in", self.data_in),
            ("sf_data_out", self.data_out),
            ("sf_connect_in", self.connect_in),
            ("sf_connect_out", self.connect_out),
            ("sf_bind", self.bind),
            ("sf_setoption", self.setoption),
            ("sf_getoption", self.getoption),
            ("sf_listen", self.listen),
            ("sf_ioctl", self.ioctl),
        ];
        if self.flags & SFLT_EXTENDED != 0 {
            v.push(("sf_accept", self.accept));
        }
        v.retain(|&(_, a)| a != 0);
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegState {
    Registered,
    /// `sflt_unregister` called; `sf_unregistered` not yet delivered.
    Unregistering,
    Unregistered,
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub filter: SfltFilter,
    pub name: String,
    pub domain: i32,
    pub ty: i32,
    pub protocol: i32,
    pub state: RegState,
}

/// An emulated socket: what `sock_*` queries answer, and the filters attached.
#[derive(Debug, Clone, Default)]
pub struct Socket {
    pub domain: i32,
    pub ty: i32,
    pub protocol: i32,
    pub local: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
    /// (filter handle, cookie) of each attached filter, in attach order.
    pub attached: Vec<(u32, u64)>,
    /// Data the filters injected (`sock_inject_data_out`/`_in`), to be carried by the emulator.
    pub injected_out: Vec<Vec<u8>>,
    pub injected_in: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct SocketFilters {
    pub regs: BTreeMap<u32, Registration>,
    pub sockets: BTreeMap<u64, Socket>,
    /// Callbacks running now or finished with a partner still running (the
    /// cookie-race check, [`CookieWatch`]).
    pub watch: CookieWatch,
}

/// A socket-filter callback that receives a cookie (`sf_notify`,
/// `sf_connect_out`, `sf_data_in`/`sf_data_out`): xnu drops the socket lock
/// before calling these (bsd/kern/kpi_socketfilter.c), so on a real kernel two
/// of them can run at once for one socket, on two CPUs, both with the cookie.
#[derive(Debug, Clone)]
pub struct Run {
    pub cookie: u64,
    pub what: String,
    pub thread: std::thread::ThreadId,
    /// Exclusive locks this callback took (lock ids), while it ran.
    pub locks: std::collections::BTreeSet<u64>,
    /// Runs of the same cookie that overlapped this one in time.
    pub partners: Vec<u64>,
    pub done: bool,
}

/// The cookie-race check (an Eraser-style lockset check at callback
/// granularity): two callbacks of one cookie that overlap in time must both
/// have taken a common exclusive lock (the cookie's own lock, typically);
/// otherwise both may use the cookie at once, and `cookie-race` is reported.
/// Single-threaded scenarios never overlap; the multi-threaded ones do.
#[derive(Debug, Default)]
pub struct CookieWatch {
    pub runs: BTreeMap<u64, Run>,
    next: u64,
    /// Cookies already reported (once each).
    pub reported: std::collections::BTreeSet<u64>,
}

impl CookieWatch {
    /// A callback with `cookie` begins on the calling thread; returns its run id.
    pub fn enter(&mut self, cookie: u64, what: &str) -> u64 {
        let me = std::thread::current().id();
        self.next += 1;
        let id = self.next;
        let partners: Vec<u64> = self
            .runs
            .iter()
            // Nested callbacks on one thread (data_out re-entered by an
            // injection) do not run at once.
            .filter(|(_, r)| r.cookie == cookie && !r.done && r.thread != me)
            .map(|(i, _)| *i)
            .collect();
        for p in &partners {
            if let Some(r) = self.runs.get_mut(p) {
                r.partners.push(id);
            }
        }
        self.runs.insert(
            id,
            Run {
                cookie,
                what: what.to_string(),
                thread: me,
                locks: Default::default(),
                partners,
                done: false,
            },
        );
        id
    }

    /// The calling thread took exclusive lock `lock`.
    pub fn note_lock(&mut self, lock: u64) {
        let me = std::thread::current().id();
        for r in self.runs.values_mut() {
            if r.thread == me && !r.done {
                r.locks.insert(lock);
            }
        }
    }

    /// Run `id` ended; returns a description of each race found (a partner
    /// that also ended, with which it shared no lock).
    pub fn leave(&mut self, id: u64) -> Vec<String> {
        let mut found = Vec::new();
        let Some(me) = self.runs.get_mut(&id) else {
            return found;
        };
        me.done = true;
        let me = me.clone();
        for p in &me.partners {
            let Some(other) = self.runs.get(p) else {
                continue;
            };
            if other.done
                && me.locks.is_disjoint(&other.locks)
                && !self.reported.contains(&me.cookie)
            {
                self.reported.insert(me.cookie);
                found.push(format!(
                    "{} and {} ran at once on two threads with cookie {:#x} (xnu drops the socket lock around both) and took no common lock: both may use the cookie at the same time",
                    other.what, me.what, me.cookie
                ));
            }
        }
        // Forget runs whose partners have all ended.
        let finished: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, r)| {
                r.done
                    && r.partners
                        .iter()
                        .all(|p| self.runs.get(p).is_none_or(|x| x.done))
            })
            .map(|(i, _)| *i)
            .collect();
        for i in finished {
            self.runs.remove(&i);
        }
        found
    }
}

impl SocketFilters {
    /// Registrations not yet fully unregistered.
    pub fn live(&self) -> Vec<&Registration> {
        self.regs
            .values()
            .filter(|r| r.state != RegState::Unregistered)
            .collect()
    }
}
