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
    pub tags: Tags,
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
    /// Freed and consumed mbufs, oldest first: their records (and buffers) are
    /// kept while they are among the last [`QUARANTINE`], so a late use names
    /// them; older ones are forgotten (a use is then a `mbuf-bad-handle`), so
    /// long runs (the soak) do not grow without bound.
    pub retired: std::collections::VecDeque<u64>,
}

/// How many freed/consumed mbufs keep their records and buffers.
pub const QUARANTINE: usize = 1 << 16;

use super::{self as kernel, Kernel, Kind};

/// mbuf tags as the emulator keeps them: (module id, type, data).
pub type Tags = Vec<(u32, u16, Box<[u8]>)>;

/// Capacity of a plain mbuf's data area and of a cluster (as xnu's MLEN/MCLBYTES, roughly).
pub const MLEN: usize = 224;
pub const MCLBYTES: usize = 2048;
/// Leading space the emulated stack leaves in packets it builds (room for `mbuf_prepend`).
pub const LEADING: usize = 64;
pub const MBUF_EXT: u32 = 0x0001;
pub const MBUF_PKTHDR: u32 = 0x0002;

pub fn handle_of(id: u64) -> u64 {
    kernel::handle(Kind::Mbuf, id)
}

impl Kernel {
    /// A new mbuf of `cap` bytes (data at `off`), owned by `owner`.
    pub fn mbuf_new(&mut self, cap: usize, off: usize, pkthdr: bool, owner: Owner) -> u64 {
        let id = self.new_id();
        let mut flags = if pkthdr { MBUF_PKTHDR } else { 0 };
        if cap > MLEN {
            flags |= MBUF_EXT;
        }
        self.mbufs.all.insert(
            id,
            Mbuf {
                id,
                buf: vec![0u8; cap].into_boxed_slice(),
                off,
                len: 0,
                next: None,
                nextpkt: None,
                mtype: 1,
                flags,
                pkthdr: pkthdr.then(PktHdr::default),
                owner,
            },
        );
        id
    }

    /// Resolves an `mbuf_t` for KPI `op`; reports NULL, foreign, freed and consumed mbufs.
    pub fn mbuf_live(&mut self, h: u64, op: &str) -> Option<u64> {
        if h == 0 {
            self.violation("mbuf-null", format!("{op}: NULL mbuf_t"));
            return None;
        }
        let Some(id) = kernel::unhandle(h, Kind::Mbuf).filter(|id| self.mbufs.all.contains_key(id))
        else {
            self.violation(
                "mbuf-bad-handle",
                format!("{op}({h:#x}): not an mbuf_t made by the kernel"),
            );
            return None;
        };
        match self.mbufs.all[&id].owner.clone() {
            Owner::Freed { during, by } => {
                self.violation(
                    "mbuf-use-after-free",
                    format!("{op}: mbuf #{id} was freed by {by} during {during}"),
                );
                None
            }
            Owner::Consumed { during, by } => {
                self.violation(
                    "mbuf-use-after-handoff",
                    format!("{op}: mbuf #{id} was handed to the stack by {by} during {during}; it is no longer the kext's"),
                );
                None
            }
            _ => Some(id),
        }
    }

    pub fn mbuf(&self, id: u64) -> &Mbuf {
        &self.mbufs.all[&id]
    }

    pub fn mbuf_mut(&mut self, id: u64) -> &mut Mbuf {
        self.mbufs.all.get_mut(&id).expect("mbuf id from mbuf_live")
    }

    /// Ids of the chain starting at `id` (following `next`).
    pub fn mbuf_chain(&self, id: u64) -> Vec<u64> {
        let mut out = vec![id];
        let mut cur = self.mbufs.all.get(&id).and_then(|m| m.next);
        while let Some(n) = cur {
            if out.contains(&n) || out.len() > 10_000 {
                break;
            }
            out.push(n);
            cur = self.mbufs.all.get(&n).and_then(|m| m.next);
        }
        out
    }

    /// The bytes of a chain.
    pub fn mbuf_bytes(&self, id: u64) -> Vec<u8> {
        let mut v = Vec::new();
        for i in self.mbuf_chain(id) {
            let m = &self.mbufs.all[&i];
            v.extend_from_slice(&m.buf[m.off..m.off + m.len]);
        }
        v
    }

    /// A packet (pkthdr, one cluster) holding `bytes`, owned by the stack.
    pub fn mbuf_packet(&mut self, bytes: &[u8]) -> u64 {
        let cap = (LEADING + bytes.len()).max(MCLBYTES);
        let id = self.mbuf_new(cap, LEADING, true, Owner::Stack);
        let m = self.mbuf_mut(id);
        m.buf[LEADING..LEADING + bytes.len()].copy_from_slice(bytes);
        m.len = bytes.len();
        if let Some(h) = m.pkthdr.as_mut() {
            h.len = bytes.len();
        }
        id
    }

    /// Marks every mbuf of the chain with `owner`.
    pub fn mbuf_set_owner(&mut self, id: u64, owner: Owner) {
        let retired = matches!(owner, Owner::Freed { .. } | Owner::Consumed { .. });
        for i in self.mbuf_chain(id) {
            self.mbuf_mut(i).owner = owner.clone();
            if retired {
                self.mbuf_retire(i);
            }
        }
    }

    /// A filter returned `EJUSTRETURN` for the mbuf behind handle `m`: the
    /// kext keeps it (`what` names the callback), unless it already freed or
    /// consumed it.
    pub fn mbuf_kept_by_kext(&mut self, m: u64, what: &str) {
        if let Some(mid) = kernel::unhandle(m, Kind::Mbuf)
            && matches!(
                self.mbufs.all.get(&mid).map(|x| &x.owner),
                Some(Owner::Stack)
            )
        {
            self.mbuf_set_owner(
                mid,
                Owner::Kext {
                    since: format!("EJUSTRETURN from {what}"),
                },
            );
        }
    }

    /// Puts a freed or consumed mbuf in quarantine (see [`Mbufs::retired`]).
    pub fn mbuf_retire(&mut self, id: u64) {
        self.mbufs.retired.push_back(id);
        while self.mbufs.retired.len() > QUARANTINE {
            let Some(old) = self.mbufs.retired.pop_front() else {
                break;
            };
            if matches!(
                self.mbufs.all.get(&old).map(|m| &m.owner),
                Some(Owner::Freed { .. } | Owner::Consumed { .. })
            ) {
                self.mbufs.all.remove(&old);
            }
        }
    }

    /// Frees the chain at `id` (already validated), recording who did it.
    pub fn mbuf_free_chain(&mut self, id: u64, by: &str) {
        let during = self.during();
        for i in self.mbuf_chain(id) {
            self.mbuf_mut(i).owner = Owner::Freed {
                during: during.clone(),
                by: by.to_string(),
            };
            self.mbuf_retire(i);
        }
    }

    /// The stack frees what a callback left in its `mbuf_t *` slot after
    /// returning an error (xnu's `ipf_output`/`ipf_input`/`sflt_data_*` free the
    /// packet then): a chain the kext already freed or handed to an injection
    /// KPI is a double free on a real kernel, and is reported as such.
    pub fn mbuf_stack_free_returned(&mut self, h: u64, what: &str) {
        if h == 0 {
            return;
        }
        let Some(id) = kernel::unhandle(h, Kind::Mbuf).filter(|id| self.mbufs.all.contains_key(id))
        else {
            self.violation(
                "mbuf-bad-handle",
                format!("{what} returned an error leaving {h:#x} in its mbuf_t * slot: not an mbuf_t made by the kernel"),
            );
            return;
        };
        match self.mbufs.all[&id].owner.clone() {
            Owner::Consumed { during, by } => self.violation(
                "mbuf-freed-after-inject",
                format!(
                    "{what} returned an error, so the stack frees mbuf #{id}, which was handed to the stack by {by} during {during}: a double free"
                ),
            ),
            Owner::Freed { during, by } => self.violation(
                "mbuf-double-free",
                format!(
                    "{what} returned an error, so the stack frees mbuf #{id}, which was already freed by {by} during {during}"
                ),
            ),
            Owner::Stack | Owner::Kext { .. } => self.mbuf_free_chain(id, "the stack"),
        }
    }

    /// The stack frees a chain it owns (after a callback returned it).
    pub fn mbuf_stack_free(&mut self, id: u64) {
        if matches!(
            self.mbufs.all.get(&id).map(|m| &m.owner),
            Some(Owner::Stack) | Some(Owner::Kext { .. })
        ) {
            self.mbuf_free_chain(id, "the stack");
        }
    }
}
