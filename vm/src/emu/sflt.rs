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
