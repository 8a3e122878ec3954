//! IP filters (`ipf_addv4`/`ipf_addv6`/`ipf_remove`, xnu bsd/netinet/kpi_ipfilter.h).

/// `struct ipf_filter` (40 bytes) as the kernel copies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpfFilter {
    pub cookie: u64,
    pub name: u64,
    pub input: u64,
    pub output: u64,
    pub detach: u64,
}

impl IpfFilter {
    pub const SIZE: usize = 40;

    pub fn parse(b: &[u8; Self::SIZE]) -> Self {
        let q = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        IpfFilter {
            cookie: q(0),
            name: q(8),
            input: q(16),
            output: q(24),
            detach: q(32),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpfState {
    Attached,
    /// `ipf_remove` called; `ipf_detach` deferred.
    Removing,
    Detached,
}

#[derive(Debug, Clone)]
pub struct IpfReg {
    pub id: u64,
    pub v6: bool,
    pub filter: IpfFilter,
    pub name: String,
    pub state: IpfState,
}

/// A packet a filter handed back with `ipf_inject_*`, waiting for the stack.
#[derive(Debug, Clone)]
pub struct Injected {
    pub bytes: Vec<u8>,
    pub csum_requested: u32,
    /// The injecting filter's id: the packet continues with the filters after it.
    pub after: Option<u64>,
    pub output: bool,
    /// The thread whose callback injected it: the packet continues on that
    /// thread's path (the multi-threaded scenarios run one path per thread).
    pub thread: std::thread::ThreadId,
}

#[derive(Debug, Default)]
pub struct IpFilters {
    /// Newest first, as xnu's TAILQ_INSERT_HEAD leaves them (the order the stack runs them).
    pub regs: Vec<IpfReg>,
    pub injected: std::collections::VecDeque<Injected>,
}

impl IpFilters {
    /// The oldest packet injected by the calling thread's callbacks.
    pub fn pop_injected(&mut self) -> Option<Injected> {
        let me = std::thread::current().id();
        let i = self.injected.iter().position(|x| x.thread == me)?;
        self.injected.remove(i)
    }

    pub fn live(&self) -> Vec<&IpfReg> {
        self.regs
            .iter()
            .filter(|r| r.state != IpfState::Detached)
            .collect()
    }
}
