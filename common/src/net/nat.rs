//! The IP filter's NAT table: flows keyed by their 5-tuple, created on the first
//! outbound packet a rule redirects, mapping the original destination to the
//! proxy; replies from the proxy are looked up by the reverse key and
//! rewritten back to the original destination.
//!
//! Design (docs/nat.md has the reasoning and the figures):
//! - **Storage is the caller's, sized at run time**: one slice of [`Entry`]
//!   whose length (a power of two, 2 to [`MAX_FLOWS`]) is the capacity. Each
//!   entry carries a flow and two buckets of each of the two open-addressing
//!   indexes (forward: client → original destination; reverse: proxy →
//!   client), so there are 2 buckets per flow and one allocation. The kext
//!   allocates it in start from its configured capacity; host tests use a
//!   `Vec` or an array. [`ENTRY_BYTES`] is the cost of one flow.
//! - **O(1) lookups**: keyed hashing (a per-table seed), linear probing,
//!   backward-shift deletion (no tombstones, so probe chains never degrade).
//! - **Lifecycle** (RFC 5382 for TCP, RFC 4787 for UDP, RFC 7857 §2.2 for
//!   RST): a TCP flow is [`FlowState::SynSent`] from the client's SYN until
//!   the proxy's SYN-ACK, then [`FlowState::Established`]; a FIN or RST in
//!   either direction makes it [`FlowState::Closing`]; a new SYN on a closing
//!   flow (port reuse) makes it `SynSent` again. SYN-sent and closing flows
//!   expire after [`Config::tcp_transitory_ms`] idle (RFC 5382 REQ-5: ≥ 4 min),
//!   established ones after [`Config::tcp_idle_ms`] (≥ 2 h 4 min). UDP flows
//!   are [`FlowState::UdpNew`] until the first reply, then
//!   [`FlowState::UdpReplied`]; both expire after [`Config::udp_idle_ms`]
//!   idle (RFC 4787 REQ-5: ≥ 2 min). [`Config::DEFAULT`] keeps every RFC
//!   minimum; the control protocol refuses timeouts below them.
//! - **Reclamation cannot be starved**: every flow sits on one list per state,
//!   in the order of its last packet (the table's clock never goes back), so
//!   each list's oldest flow is its head and the first to expire. Each
//!   insertion first removes up to [`RECLAIM_PER_INSERT`] expired heads of
//!   every list: whenever any flow has expired, an insertion into a full table
//!   finds it. Lookups also remove the expired flows they meet.
//! - **Pressure**: when the table is full of live flows, an insertion evicts
//!   the least recently active *unestablished* flow (SYN-sent TCP, UDP without
//!   a reply), which is what an exhausting source creates; established and
//!   closing flows are never evicted while live (that would break them
//!   silently). Fairness follows: a legitimate flow, once its handshake
//!   completes, cannot be evicted, and before that it is evicted only after
//!   every unestablished flow older than it — a source must open more than the
//!   whole capacity in new flows within one handshake round trip to deny
//!   another's. Only when every flow is established or closing is a new one
//!   refused ([`InsertError::Full`]); the counters say how many expired and how
//!   many were evicted ([`Stats`]).
//! - **Collisions**: a new flow whose reverse key (proxy, client endpoint,
//!   protocol) is already used by another live flow (the same client port
//!   redirected from two destinations to one proxy) is refused
//!   ([`InsertError::Collision`]): replies could not be told apart.
//! - **Concurrency**: the table is plain data behind `&mut self`; the kext
//!   keeps it behind a lock (see kext-ip).

use super::addr::{Endpoint, IpAddr};
use super::wire::{proto, tcp};

/// Expired flows reclaimed from the head of each state list on each insertion.
pub const RECLAIM_PER_INSERT: usize = 4;

/// The largest capacity (entries are linked by 32-bit ids, buckets are 2 per entry).
pub const MAX_FLOWS: usize = 1 << 24;

/// Bytes one flow costs: its [`Entry`], indexes included.
pub const ENTRY_BYTES: usize = core::mem::size_of::<Entry>();

/// An endpoint of unused table slots.
const ZERO: Endpoint = Endpoint::new(IpAddr::V4([0; 4]), 0);

/// A flow as the client sends it: protocol, client (source), original destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol (TCP, UDP).
    pub protocol: u8,
    /// The client's endpoint.
    pub src: Endpoint,
    /// The original destination.
    pub dst: Endpoint,
}

/// Timeouts, in milliseconds of the clock the caller passes as `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// An established TCP flow without packets for this long expires.
    pub tcp_idle_ms: u64,
    /// A TCP flow in a transitory state (SYN sent, or closing after a FIN or
    /// RST in either direction) without packets for this long expires.
    pub tcp_transitory_ms: u64,
    /// UDP (and other protocols) without packets for this long expires.
    pub udp_idle_ms: u64,
}

impl Config {
    /// The RFCs' minimums: TCP established 2 h 4 min (RFC 5382 REQ-5), TCP
    /// transitory 4 min (RFC 5382 REQ-5, RFC 7857 §2.2 for RST), UDP 2 min
    /// (RFC 4787 REQ-5).
    pub const RFC_MIN: Config = Config {
        tcp_idle_ms: 7_440_000,
        tcp_transitory_ms: 240_000,
        udp_idle_ms: 120_000,
    };

    /// Defaults: TCP established 2 h 4 min, transitory 4 min, UDP 5 min
    /// (RFC 4787's recommendation).
    pub const DEFAULT: Config = Config {
        tcp_idle_ms: 7_440_000,
        tcp_transitory_ms: 240_000,
        udp_idle_ms: 300_000,
    };

    /// True when no timeout is below [`Config::RFC_MIN`].
    pub fn meets_rfcs(&self) -> bool {
        self.tcp_idle_ms >= Self::RFC_MIN.tcp_idle_ms
            && self.tcp_transitory_ms >= Self::RFC_MIN.tcp_transitory_ms
            && self.udp_idle_ms >= Self::RFC_MIN.udp_idle_ms
    }

    fn timeout(&self, s: FlowState) -> u64 {
        match s {
            FlowState::SynSent | FlowState::Closing => self.tcp_transitory_ms,
            FlowState::Established => self.tcp_idle_ms,
            FlowState::UdpNew | FlowState::UdpReplied => self.udp_idle_ms,
        }
    }
}

/// Why a flow was not created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The table is full of established or closing flows.
    Full,
    /// Another live flow uses the same reverse key.
    Collision,
}

/// Why a table could not be made over a storage slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCapacity(pub usize);

/// Where a flow is in its life (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    /// TCP: the client's SYN was seen, the proxy has not answered.
    SynSent = 0,
    /// TCP: the proxy answered with a SYN-ACK.
    Established = 1,
    /// TCP: a FIN or RST was seen.
    Closing = 2,
    /// UDP (or another protocol): no reply yet.
    UdpNew = 3,
    /// UDP: the proxy replied.
    UdpReplied = 4,
}

const STATES: usize = 5;

impl FlowState {
    fn list(self) -> usize {
        self as usize
    }

    /// True for the states early eviction may take (no reply seen yet).
    pub fn unestablished(self) -> bool {
        matches!(self, FlowState::SynSent | FlowState::UdpNew)
    }

    /// The state after a packet with TCP `flags` (0 for other protocols).
    fn next(self, flags: u8, outbound: bool) -> FlowState {
        match self {
            FlowState::UdpNew if !outbound => FlowState::UdpReplied,
            FlowState::UdpNew | FlowState::UdpReplied => self,
            _ if flags & (tcp::RST | tcp::FIN) != 0 => FlowState::Closing,
            FlowState::Closing if outbound && flags & (tcp::SYN | tcp::ACK) == tcp::SYN => {
                FlowState::SynSent
            }
            FlowState::SynSent
                if !outbound && flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK =>
            {
                FlowState::Established
            }
            s => s,
        }
    }
}

/// One translated flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The flow as the client sends it.
    pub key: FlowKey,
    /// Where its packets go instead of `key.dst`.
    pub proxy: Endpoint,
    /// Time of the last packet (either direction).
    pub last_seen: u64,
    /// Where it is in its life.
    pub state: FlowState,
}

impl Flow {
    /// When it expires under `cfg` if no packet comes.
    pub fn expires_at(&self, cfg: &Config) -> u64 {
        self.last_seen.saturating_add(cfg.timeout(self.state))
    }

    fn is_expired(&self, cfg: &Config, now: u64) -> bool {
        now >= self.expires_at(cfg)
    }

    fn rev_key(&self) -> (u8, Endpoint, Endpoint) {
        (self.key.protocol, self.proxy, self.key.src)
    }
}

/// One slot of a table's storage: a flow (when used), its links on its state
/// list (or the free list) and two buckets of each index.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    flow: Flow,
    used: bool,
    prev: u32,
    next: u32,
    fwd: [u32; 2],
    rev: [u32; 2],
}

impl Entry {
    /// An unused entry (fill a new storage slice with it).
    pub const EMPTY: Entry = Entry {
        flow: Flow {
            key: FlowKey {
                protocol: 0,
                src: ZERO,
                dst: ZERO,
            },
            proxy: ZERO,
            last_seen: 0,
            state: FlowState::UdpNew,
        },
        used: false,
        prev: NONE,
        next: NONE,
        fwd: [0; 2],
        rev: [0; 2],
    };
}

/// No entry (ids are 1-based).
const NONE: u32 = 0;

/// A table's storage: a slice of entries.
pub trait Store: AsRef<[Entry]> + AsMut<[Entry]> {}
impl<T: AsRef<[Entry]> + AsMut<[Entry]> + ?Sized> Store for T {}

/// The NAT table over storage `S` (module docs).
#[derive(Debug, Clone)]
pub struct NatTable<S> {
    cfg: Config,
    seed: u64,
    store: S,
    /// Entries `fresh..capacity` were never used.
    fresh: usize,
    free_head: u32,
    len: usize,
    heads: [u32; STATES],
    tails: [u32; STATES],
    counts: [usize; STATES],
    /// The latest `now` seen: the table's clock never goes back.
    clock: u64,
    expired: u64,
    evicted: u64,
    /// Flows inserted since the table was made.
    inserted: u64,
}

/// Statistics of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tracked entries (some may be expired and not yet reclaimed).
    pub flows: usize,
    /// Capacity.
    pub capacity: usize,
    /// Of `flows`, those not yet answered (SYN sent, UDP without reply).
    pub unestablished: usize,
    /// Flows removed because they expired, since the table was made.
    pub expired: u64,
    /// Unestablished flows evicted early to make room for a new one.
    pub evicted: u64,
}

/// Folded multiply: the two halves of the 128-bit product xor-ed (the mixer
/// of wyhash and foldhash). One multiply mixes two 64-bit words.
fn fold_mul(x: u64, k: u64) -> u64 {
    let p = u128::from(x).wrapping_mul(u128::from(k));
    (p as u64) ^ ((p >> 64) as u64)
}

/// Per-word keys derived from the table's seed (odd constants from the
/// fractional part of π, as in wyhash).
const K: [u64; 5] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
];

/// An address as two 64-bit words (IPv4: the address in the low word).
fn addr_words(a: &IpAddr) -> (u64, u64) {
    match a {
        IpAddr::V4(b) => (0, u64::from(u32::from_be_bytes(*b))),
        IpAddr::V6(b) => {
            let (hi, lo) = b.split_at(8);
            let w = |s: &[u8]| <[u8; 8]>::try_from(s).map_or(0, u64::from_be_bytes);
            (w(hi), w(lo))
        }
    }
}

/// The keyed hash of a flow key (protocol, two endpoints) packed into 64-bit
/// words: family, protocol and ports in one word, IPv4 addresses in another
/// (IPv6: two per address), each pair mixed by one folded multiply with
/// seed-derived keys. Replaces a byte-at-a-time FNV-1a (36 multiplies for an
/// IPv4 key, 3 here; 84 for IPv6, 4 here). Keyed by the table's random seed:
/// an outsider who does not know it cannot aim flows at one bucket.
fn hash3(seed: u64, protocol: u8, a: &Endpoint, b: &Endpoint) -> u64 {
    let v6 = matches!(a.addr, IpAddr::V6(_)) || matches!(b.addr, IpAddr::V6(_));
    let meta = u64::from(a.port) << 48
        | u64::from(b.port) << 32
        | u64::from(protocol) << 8
        | if v6 { 6 } else { 4 };
    let (ah, al) = addr_words(&a.addr);
    let (bh, bl) = addr_words(&b.addr);
    let h = if v6 {
        fold_mul(ah ^ seed ^ K[0], al ^ K[1]) ^ fold_mul(bh ^ seed ^ K[2], bl ^ K[3])
    } else {
        fold_mul(al << 32 ^ bl ^ seed ^ K[0], K[1])
    };
    fold_mul(h ^ meta ^ K[4], seed ^ K[2])
}

/// Endpoint equality, ports first.
#[inline(always)]
fn same(x: &Endpoint, y: &Endpoint) -> bool {
    x.port == y.port && x.addr == y.addr
}

fn pos(id: u32) -> Option<usize> {
    usize::try_from(id).ok()?.checked_sub(1)
}

impl<S: Store> NatTable<S> {
    /// An empty table over `store`, whose length (a power of two, 2 to
    /// [`MAX_FLOWS`]) is the capacity; every entry is reset.
    pub fn new(mut store: S, cfg: Config, seed: u64) -> Result<Self, BadCapacity> {
        let n = store.as_ref().len();
        if !(2..=MAX_FLOWS).contains(&n) || !n.is_power_of_two() {
            return Err(BadCapacity(n));
        }
        store.as_mut().fill(Entry::EMPTY);
        Ok(NatTable {
            cfg,
            seed,
            store,
            fresh: 0,
            free_head: NONE,
            len: 0,
            heads: [NONE; STATES],
            tails: [NONE; STATES],
            counts: [0; STATES],
            clock: 0,
            expired: 0,
            evicted: 0,
            inserted: 0,
        })
    }

    /// The timeouts.
    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Sets the timeouts (they apply to live flows too: expiry is computed
    /// from each flow's last packet; each state list stays in expiry order).
    pub fn set_config(&mut self, cfg: Config) {
        self.cfg = cfg;
    }

    /// Live entries, capacity and counters.
    pub fn stats(&self) -> Stats {
        let unestablished = self
            .counts
            .get(FlowState::SynSent.list())
            .copied()
            .unwrap_or(0)
            .saturating_add(
                self.counts
                    .get(FlowState::UdpNew.list())
                    .copied()
                    .unwrap_or(0),
            );
        Stats {
            flows: self.len,
            capacity: self.capacity(),
            unestablished,
            expired: self.expired,
            evicted: self.evicted,
        }
    }

    /// How many flows the table holds at most.
    pub fn capacity(&self) -> usize {
        self.store.as_ref().len()
    }

    /// Flows inserted since the table was made (a caller compares it before
    /// and after a packet to learn whether the packet created one).
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.capacity().wrapping_mul(2).wrapping_sub(1)
    }

    fn tick(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    fn entry(&self, id: u32) -> Option<&Entry> {
        self.store.as_ref().get(pos(id)?)
    }

    fn entry_mut(&mut self, id: u32) -> Option<&mut Entry> {
        self.store.as_mut().get_mut(pos(id)?)
    }

    fn flow(&self, id: u32) -> Option<&Flow> {
        self.entry(id).filter(|e| e.used).map(|e| &e.flow)
    }

    fn bucket(&self, reverse: bool, i: usize) -> u32 {
        match self.store.as_ref().get(i >> 1) {
            Some(e) => {
                let b = if reverse { &e.rev } else { &e.fwd };
                b.get(i & 1).copied().unwrap_or(0)
            }
            None => 0,
        }
    }

    fn set_bucket(&mut self, reverse: bool, i: usize, v: u32) {
        if let Some(e) = self.store.as_mut().get_mut(i >> 1) {
            let b = if reverse { &mut e.rev } else { &mut e.fwd };
            if let Some(s) = b.get_mut(i & 1) {
                *s = v;
            }
        }
    }

    fn fwd_home(&self, f: &Flow) -> usize {
        (hash3(self.seed, f.key.protocol, &f.key.src, &f.key.dst) as usize) & self.mask()
    }

    fn rev_home(&self, f: &Flow) -> usize {
        let (p, a, b) = f.rev_key();
        (hash3(self.seed, p, &a, &b) as usize) & self.mask()
    }

    /// The id of the entry matching in the forward (or reverse) index, and its bucket.
    fn find(
        &self,
        reverse: bool,
        protocol: u8,
        a: &Endpoint,
        b: &Endpoint,
    ) -> Option<(u32, usize)> {
        let store = self.store.as_ref();
        let mask = self.mask();
        let mut i = (hash3(self.seed, protocol, a, b) as usize) & mask;
        for _ in 0..=mask {
            // Bucket `i` is the `i & 1` one of entry `i / 2` (in bounds: the
            // mask is twice the capacity, less one).
            let slot = store.get(i >> 1)?;
            let pair = if reverse { &slot.rev } else { &slot.fwd };
            let e = if i & 1 == 0 { pair[0] } else { pair[1] };
            if e == NONE {
                return None;
            }
            if let Some(en) = pos(e).and_then(|p| store.get(p))
                && en.used
            {
                let f = &en.flow;
                // Ports first: the cheapest compare that tells most flows apart.
                let hit = f.key.protocol == protocol
                    && if reverse {
                        same(&f.proxy, a) && same(&f.key.src, b)
                    } else {
                        same(&f.key.src, a) && same(&f.key.dst, b)
                    };
                if hit {
                    return Some((e, i));
                }
            }
            i = i.wrapping_add(1) & mask;
        }
        None
    }

    fn index_insert(&mut self, reverse: bool, home: usize, e: u32) {
        let mask = self.mask();
        let mut i = home;
        for _ in 0..=mask {
            if self.bucket(reverse, i) == NONE {
                self.set_bucket(reverse, i, e);
                return;
            }
            i = i.wrapping_add(1) & mask;
        }
    }

    /// Backward-shift deletion at bucket `hole`.
    fn index_remove(&mut self, reverse: bool, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        for _ in 0..=mask {
            j = j.wrapping_add(1) & mask;
            let e = self.bucket(reverse, j);
            if e == NONE {
                break;
            }
            let Some(f) = self.flow(e) else { break };
            let k = if reverse {
                self.rev_home(f)
            } else {
                self.fwd_home(f)
            };
            let stays = if hole <= j {
                hole < k && k <= j
            } else {
                hole < k || k <= j
            };
            if stays {
                continue;
            }
            self.set_bucket(reverse, hole, e);
            hole = j;
        }
        self.set_bucket(reverse, hole, NONE);
    }

    // ---- state lists ----

    fn unlink(&mut self, id: u32) {
        let Some(e) = self.entry(id) else { return };
        let (prev, next, list) = (e.prev, e.next, e.flow.state.list());
        match self.entry_mut(prev) {
            Some(p) => p.next = next,
            None => {
                if let Some(h) = self.heads.get_mut(list) {
                    *h = next;
                }
            }
        }
        match self.entry_mut(next) {
            Some(n) => n.prev = prev,
            None => {
                if let Some(t) = self.tails.get_mut(list) {
                    *t = prev;
                }
            }
        }
        if let Some(c) = self.counts.get_mut(list) {
            *c = c.saturating_sub(1);
        }
        if let Some(e) = self.entry_mut(id) {
            e.prev = NONE;
            e.next = NONE;
        }
    }

    fn push_tail(&mut self, id: u32) {
        let Some(list) = self.flow(id).map(|f| f.state.list()) else {
            return;
        };
        let tail = self.tails.get(list).copied().unwrap_or(NONE);
        if let Some(e) = self.entry_mut(id) {
            e.prev = tail;
            e.next = NONE;
        }
        match self.entry_mut(tail) {
            Some(t) => t.next = id,
            None => {
                if let Some(h) = self.heads.get_mut(list) {
                    *h = id;
                }
            }
        }
        if let Some(t) = self.tails.get_mut(list) {
            *t = id;
        }
        if let Some(c) = self.counts.get_mut(list) {
            *c = c.saturating_add(1);
        }
    }

    /// Removes entry `id` from its list and both indexes and frees it.
    fn remove_entry(&mut self, id: u32) {
        let Some(f) = self.flow(id).copied() else {
            return;
        };
        self.unlink(id);
        if let Some((_, i)) = self.find(false, f.key.protocol, &f.key.src, &f.key.dst) {
            self.index_remove(false, i);
        }
        let (p, a, b) = f.rev_key();
        if let Some((_, i)) = self.find(true, p, &a, &b) {
            self.index_remove(true, i);
        }
        let head = self.free_head;
        if let Some(e) = self.entry_mut(id) {
            e.used = false;
            e.next = head;
            self.free_head = id;
            self.len = self.len.saturating_sub(1);
        }
    }

    /// Records a packet on live entry `id`: new state, last seen, moved to
    /// the tail of its state's list (the common case, where only the time
    /// moves, is [`Self::refresh`]'s).
    fn touch(&mut self, id: u32, flags: u8, outbound: bool, now: u64) {
        self.unlink(id);
        if let Some(e) = self.entry_mut(id) {
            e.flow.state = e.flow.state.next(flags, outbound);
            e.flow.last_seen = e.flow.last_seen.max(now);
        }
        self.push_tail(id);
    }

    /// Removes up to `budget` expired flows from the head of each state list.
    fn reclaim(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0usize;
        for list in 0..STATES {
            for _ in 0..budget {
                let head = self.heads.get(list).copied().unwrap_or(NONE);
                match self.flow(head) {
                    Some(f) if f.is_expired(&self.cfg, now) => {
                        self.remove_entry(head);
                        removed = removed.saturating_add(1);
                    }
                    _ => break,
                }
            }
        }
        self.expired = self.expired.saturating_add(removed as u64);
        removed
    }

    /// Evicts the least recently active unestablished flow; false if none.
    fn evict_unestablished(&mut self) -> bool {
        let head = |s: FlowState| {
            let id = self.heads.get(s.list()).copied().unwrap_or(NONE);
            self.flow(id).map(|f| (f.last_seen, id))
        };
        let victim = match (head(FlowState::SynSent), head(FlowState::UdpNew)) {
            (Some(a), Some(b)) => {
                if a.0 <= b.0 {
                    a.1
                } else {
                    b.1
                }
            }
            (Some(a), None) => a.1,
            (None, Some(b)) => b.1,
            (None, None) => return false,
        };
        self.remove_entry(victim);
        self.evicted = self.evicted.saturating_add(1);
        true
    }

    fn alloc_id(&mut self) -> Option<u32> {
        if self.free_head != NONE {
            let id = self.free_head;
            self.free_head = self.entry(id).map(|e| e.next).unwrap_or(NONE);
            return Some(id);
        }
        if self.fresh < self.capacity() {
            self.fresh = self.fresh.wrapping_add(1);
            return u32::try_from(self.fresh).ok();
        }
        None
    }

    /// Removes the entry `id` if its flow has expired; true if it did.
    fn drop_if_expired(&mut self, id: u32, now: u64) -> bool {
        let expired = self.flow(id).is_some_and(|f| f.is_expired(&self.cfg, now));
        if expired {
            self.expire(id);
        }
        expired
    }

    /// Removes the expired flow `id` and counts it.
    fn expire(&mut self, id: u32) {
        self.remove_entry(id);
        self.expired = self.expired.saturating_add(1);
    }

    /// The flow `key` if it is tracked and live (an expired one is removed).
    pub fn get(&mut self, key: &FlowKey, now: u64) -> Option<Flow> {
        let now = self.tick(now);
        let (id, _) = self.find(false, key.protocol, &key.src, &key.dst)?;
        if self.drop_if_expired(id, now) {
            return None;
        }
        self.flow(id).copied()
    }

    /// An outbound packet of flow `key` with TCP `flags`: the proxy endpoint of
    /// a live tracked flow (refreshed), or None.
    pub fn outbound(&mut self, key: &FlowKey, flags: u8, now: u64) -> Option<Endpoint> {
        let now = self.tick(now);
        let (id, _) = self.find(false, key.protocol, &key.src, &key.dst)?;
        self.refresh(id, flags, true, now).map(|f| f.proxy)
    }

    /// A packet of live entry `id`'s flow with TCP `flags` (`outbound`: from
    /// the client): its flow, refreshed; an expired flow is removed instead
    /// (`None`). One entry lookup for the common case of a flow's packets in a
    /// row: already the most recent of its list and its state unchanged, only
    /// the time moves; otherwise [`Self::touch`].
    #[inline]
    fn refresh(&mut self, id: u32, flags: u8, outbound: bool, now: u64) -> Option<&Flow> {
        let cfg = self.cfg;
        let tail = |s: FlowState| self.tails.get(s.list()).copied();
        let (expired, quick) = {
            let e = self.entry(id).filter(|e| e.used)?;
            let state = e.flow.state;
            (
                e.flow.is_expired(&cfg, now),
                e.next == NONE && state.next(flags, outbound) == state && tail(state) == Some(id),
            )
        };
        if expired {
            self.expire(id);
            return None;
        }
        if !quick {
            self.touch(id, flags, outbound, now);
            return self.flow(id);
        }
        let e = self.entry_mut(id)?;
        e.flow.last_seen = e.flow.last_seen.max(now);
        Some(&e.flow)
    }

    /// An inbound packet from `from` to `to` (protocol, TCP `flags`): the original
    /// destination to put back as its source, if `from` is the proxy of a live flow
    /// of client `to`.
    pub fn inbound(
        &mut self,
        protocol: u8,
        from: &Endpoint,
        to: &Endpoint,
        flags: u8,
        now: u64,
    ) -> Option<Endpoint> {
        let now = self.tick(now);
        let (id, _) = self.find(true, protocol, from, to)?;
        self.refresh(id, flags, false, now).map(|f| f.key.dst)
    }

    /// The live flow `key`, looked up without any side effect: no refresh of
    /// its idle time, no TCP state change, no removal of an expired entry (it
    /// reads as absent). For packets that concern a flow without being part of
    /// it (ICMP errors quoting one of its packets).
    pub fn peek_forward(&self, key: &FlowKey, now: u64) -> Option<Flow> {
        let (id, _) = self.find(false, key.protocol, &key.src, &key.dst)?;
        let f = *self.flow(id)?;
        (!f.is_expired(&self.cfg, now.max(self.clock))).then_some(f)
    }

    /// The live flow whose proxy endpoint is `from` and client endpoint `to`
    /// (the reverse key of [`NatTable::inbound`]), without side effects (see
    /// [`NatTable::peek_forward`]).
    pub fn peek_reverse(
        &self,
        protocol: u8,
        from: &Endpoint,
        to: &Endpoint,
        now: u64,
    ) -> Option<Flow> {
        let (id, _) = self.find(true, protocol, from, to)?;
        let f = *self.flow(id)?;
        (!f.is_expired(&self.cfg, now.max(self.clock))).then_some(f)
    }

    /// Tracks a new flow `key` → `proxy` opened by a packet with TCP `flags`
    /// (module docs: reclamation first, then early eviction under pressure).
    pub fn insert(
        &mut self,
        key: FlowKey,
        proxy: Endpoint,
        flags: u8,
        now: u64,
    ) -> Result<Flow, InsertError> {
        let now = self.tick(now);
        self.reclaim(now, RECLAIM_PER_INSERT);
        if let Some((id, _)) = self.find(false, key.protocol, &key.src, &key.dst) {
            // Tracked already (a new connection on the same 5-tuple): replaced.
            self.remove_entry(id);
        }
        if let Some((id, _)) = self.find(true, key.protocol, &proxy, &key.src)
            && !self.drop_if_expired(id, now)
        {
            return Err(InsertError::Collision);
        }
        let id = match self.alloc_id() {
            Some(id) => id,
            None => {
                if !self.evict_unestablished() {
                    return Err(InsertError::Full);
                }
                self.alloc_id().ok_or(InsertError::Full)?
            }
        };
        let state = if key.protocol == proto::TCP {
            FlowState::SynSent.next(flags, true)
        } else {
            FlowState::UdpNew
        };
        let flow = Flow {
            key,
            proxy,
            last_seen: now,
            state,
        };
        let Some(e) = self.entry_mut(id) else {
            return Err(InsertError::Full);
        };
        e.flow = flow;
        e.used = true;
        self.len = self.len.wrapping_add(1);
        self.inserted = self.inserted.wrapping_add(1);
        self.push_tail(id);
        let fh = self.fwd_home(&flow);
        let rh = self.rev_home(&flow);
        self.index_insert(false, fh, id);
        self.index_insert(true, rh, id);
        Ok(flow)
    }

    /// Removes up to `budget` expired flows from the head of each state list.
    /// Returns how many were removed.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let now = self.tick(now);
        self.reclaim(now, budget)
    }

    /// Removes every flow, re-keys the hash and sets the timeouts (the
    /// counters restart).
    pub fn reset(&mut self, cfg: Config, seed: u64) {
        self.store.as_mut().fill(Entry::EMPTY);
        self.cfg = cfg;
        self.seed = seed;
        self.fresh = 0;
        self.free_head = NONE;
        self.len = 0;
        self.heads = [NONE; STATES];
        self.tails = [NONE; STATES];
        self.counts = [0; STATES];
        self.clock = 0;
        self.expired = 0;
        self.evicted = 0;
    }

    /// The live flow whose client endpoint is `client` (a TCP flow before any
    /// other), for the control's original-destination lookup. A scan of the
    /// entries (O(capacity)): for user requests, never for the packet path.
    pub fn client_flow(&self, client: &Endpoint, now: u64) -> Option<Flow> {
        let now = now.max(self.clock);
        let mut found: Option<Flow> = None;
        for f in self.flows() {
            if f.key.src != *client || f.is_expired(&self.cfg, now) {
                continue;
            }
            if f.key.protocol == proto::TCP {
                return Some(*f);
            }
            found = found.or(Some(*f));
        }
        found
    }

    /// Iterates over the tracked flows (expired ones not yet reclaimed included).
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.store
            .as_ref()
            .iter()
            .filter(|e| e.used)
            .map(|e| &e.flow)
    }

    /// Checks the table's internal invariants (for tests and the emulator's
    /// soak): every used entry is on exactly the list of its state, lists are
    /// in order of last packet, both indexes find every flow, the counts add
    /// up. Returns a description of the first violation.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut on_lists = 0usize;
        for s in [
            FlowState::SynSent,
            FlowState::Established,
            FlowState::Closing,
            FlowState::UdpNew,
            FlowState::UdpReplied,
        ] {
            let mut id = self.heads.get(s.list()).copied().unwrap_or(NONE);
            let mut prev = NONE;
            let mut last = 0u64;
            let mut n = 0usize;
            while id != NONE {
                let e = self.entry(id).ok_or("a list links outside the table")?;
                if !e.used || e.flow.state != s {
                    return Err("a list holds an entry of another state or a free one");
                }
                if e.prev != prev {
                    return Err("a list's back link is wrong");
                }
                if e.flow.last_seen < last {
                    return Err("a list is out of order of last packet");
                }
                last = e.flow.last_seen;
                n = n.saturating_add(1);
                if n > self.capacity() {
                    return Err("a list has a cycle");
                }
                prev = id;
                id = e.next;
            }
            if self.tails.get(s.list()).copied() != Some(prev) {
                return Err("a list's tail is wrong");
            }
            if self.counts.get(s.list()).copied() != Some(n) {
                return Err("a list's count is wrong");
            }
            on_lists = on_lists.saturating_add(n);
        }
        if on_lists != self.len || self.flows().count() != self.len {
            return Err("the lists do not hold every used entry");
        }
        for f in self.flows() {
            if self
                .find(false, f.key.protocol, &f.key.src, &f.key.dst)
                .and_then(|(id, _)| self.flow(id))
                != Some(f)
            {
                return Err("the forward index misses a flow");
            }
            let (p, a, b) = f.rev_key();
            if self.find(true, p, &a, &b).and_then(|(id, _)| self.flow(id)) != Some(f) {
                return Err("the reverse index misses a flow");
            }
        }
        Ok(())
    }
}

/// A decimal count at compile time (a build script's setting, e.g. the NAT
/// table's capacity); anything but digits, or a value past `usize`, gives 0.
pub const fn parse_count(s: &str) -> usize {
    let mut b = s.as_bytes();
    let mut n: usize = 0;
    while let [d, rest @ ..] = b {
        let digit = match d.checked_sub(b'0') {
            Some(x) if x <= 9 => x as usize,
            _ => return 0,
        };
        n = match n.checked_mul(10) {
            Some(x) => match x.checked_add(digit) {
                Some(y) => y,
                None => return 0,
            },
            None => return 0,
        };
        b = rest;
    }
    n
}

#[cfg(test)]
mod parse_count_tests {
    use super::parse_count;

    #[test]
    fn decimal_only() {
        assert_eq!(parse_count("65536"), 65536);
        assert_eq!(parse_count("0"), 0);
        assert_eq!(parse_count(""), 0);
        assert_eq!(parse_count("12a"), 0);
        assert_eq!(parse_count("-1"), 0);
        assert_eq!(parse_count("99999999999999999999999"), 0);
        assert_eq!(parse_count(&usize::MAX.to_string()), usize::MAX);
    }
}
