//! mbufs (xnu bsd/sys/kpi_mbuf.h): chains of buffers with an optional packet
//! header, and the ledger of who owns each one.
//!
//! Every mbuf ever made keeps its record (freed ones as tombstones, ids are never
//! reused), so a later use names the mbuf and says when it stopped being valid.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The kext holds it: it allocated it, or took it with `EJUSTRETURN`.
    Kext {
        since: String,
    },
    /// The emulated stack holds it (it may be lent to a callback).
    Stack,
    Freed {
        during: String,
        by: String,
    },
    /// Ownership moved to the stack by an injection KPI, which consumed it.
    Consumed {
        during: String,
        by: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct PktHdr {
    pub len: usize,
    pub rcvif: u64,
    pub csum_requested: u32,
    pub csum_data: u32,
    pub csum_performed: u32,
    /// (id, type, data) — data boxed so its address is stable.
    pub tags: Vec<(u32, u16, Box<[u8]>)>,
}

#[derive(Debug, Clone)]
pub struct Mbuf {
    pub id: u64,
    /// Backing store; never reallocated, so `mbuf_data` pointers stay valid.
    pub buf: Box<[u8]>,
    pub off: usize,
    pub len: usize,
    pub next: Option<u64>,
    pub nextpkt: Option<u64>,
    pub mtype: i32,
    pub flags: u32,
    pub pkthdr: Option<PktHdr>,
    pub owner: Owner,
}

#[derive(Debug, Default)]
pub struct Mbufs {
    pub all: std::collections::BTreeMap<u64, Mbuf>,
    pub tag_ids: Vec<String>,
}
