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
    #[inline(always)]
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
}

/// A flow key as the table hashes and compares it: the protocol and two
/// endpoints packed into five 64-bit words, so a probe compares words (the
/// first holds both ports and the protocol: it tells most flows apart) and the
/// hash mixes the same words.
///
/// Word 0: first port << 48 | second port << 32 | protocol << 8 | bit 1 when
/// the second address is IPv6 | bit 0 when the first is; words 1-2 the first
/// address, 3-4 the second (big-endian; an IPv4 address in the low half of
/// its second word, the first word 0). The fast path builds it straight from
/// a packet's bytes ([`Packed::from_words`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packed([u64; 5]);

/// An endpoint as [`Packed`] holds it: an address in two words and a port;
/// what the fast path writes into a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedEndpoint {
    /// IPv6 (else IPv4, in the low half of `lo`).
    pub v6: bool,
    /// The address's first eight bytes (IPv4: 0).
    pub hi: u64,
    /// The address's last eight bytes (IPv4: the address).
    pub lo: u64,
    /// The port.
    pub port: u16,
}

impl PackedEndpoint {
    /// `e` packed.
    pub fn of(e: &Endpoint) -> PackedEndpoint {
        let (v6, hi, lo) = addr_words(&e.addr);
        PackedEndpoint {
            v6,
            hi,
            lo,
            port: e.port,
        }
    }

    /// The endpoint it packs.
    pub fn endpoint(&self) -> Endpoint {
        let addr = if self.v6 {
            IpAddr::V6((u128::from(self.hi) << 64 | u128::from(self.lo)).to_be_bytes())
        } else {
            IpAddr::V4((self.lo as u32).to_be_bytes())
        };
        Endpoint::new(addr, self.port)
    }
}

/// An address as two 64-bit words and whether it is IPv6.
fn addr_words(a: &IpAddr) -> (bool, u64, u64) {
    match a {
        IpAddr::V4(b) => (false, 0, u64::from(u32::from_be_bytes(*b))),
        IpAddr::V6(b) => {
            let x = u128::from_be_bytes(*b);
            (true, (x >> 64) as u64, x as u64)
        }
    }
}

impl Packed {
    /// The key of `protocol` from `a` to `b`.
    pub fn new(protocol: u8, a: &Endpoint, b: &Endpoint) -> Packed {
        let (a6, ah, al) = addr_words(&a.addr);
        let (b6, bh, bl) = addr_words(&b.addr);
        let meta = u64::from(a.port) << 48
            | u64::from(b.port) << 32
            | u64::from(protocol) << 8
            | u64::from(b6) << 1
            | u64::from(a6);
        Packed([meta, ah, al, bh, bl])
    }

    /// The key of its words (the type's docs give the layout).
    #[inline(always)]
    pub const fn from_words(w: [u64; 5]) -> Packed {
        Packed(w)
    }

    /// The protocol.
    pub fn protocol(&self) -> u8 {
        (self.0[0] >> 8) as u8
    }

    /// The first endpoint.
    #[inline(always)]
    pub fn a(&self) -> PackedEndpoint {
        self.endpoint(false)
    }

    /// The second endpoint.
    #[inline(always)]
    pub fn b(&self) -> PackedEndpoint {
        self.endpoint(true)
    }

    /// The first or `second` endpoint: its address words, its family bit
    /// (0 or 1) and its port (bits 48 or 32).
    #[inline(always)]
    fn endpoint(&self, second: bool) -> PackedEndpoint {
        let [meta, ah, al, bh, bl] = self.0;
        let (hi, lo, family, port) = if second {
            (bh, bl, 2, 32)
        } else {
            (ah, al, 1, 48)
        };
        PackedEndpoint {
            v6: meta & family != 0,
            hi,
            lo,
            port: (meta >> port) as u16,
        }
    }

    /// Word by word, the first (ports and protocol) deciding most misses.
    #[inline(always)]
    fn same(&self, o: &Packed) -> bool {
        let [a0, a1, a2, a3, a4] = self.0;
        let [b0, b1, b2, b3, b4] = o.0;
        a0 == b0 && (a1 ^ b1) | (a2 ^ b2) | (a3 ^ b3) | (a4 ^ b4) == 0
    }

    /// The keyed hash: each address's two words mixed by one folded multiply
    /// with secret words, then the first word (ports, protocol) by a third.
    /// Replaces a byte-at-a-time FNV-1a (36 multiplies for an IPv4 key, 84
    /// for IPv6; 3 here for both). Keyed by the table's random secret: an
    /// outsider who does not know it cannot aim flows at one bucket.
    #[inline(always)]
    fn hash(&self, s: &[u64; 5]) -> u64 {
        let [w0, w1, w2, w3, w4] = self.0;
        let [s0, s1, s2, s3, s4] = *s;
        let h = fold_mul(w1 ^ s1, w2 ^ s2) ^ fold_mul(w3 ^ s3, w4 ^ s4);
        fold_mul(h ^ w0, s0)
    }
}

/// One slot of a table's storage: a flow (when used) as its forward key
/// (protocol, client, original destination) and reverse key (protocol, proxy,
/// client), its links on its state list (or the free list) and two buckets
/// of each index.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    fwd: Packed,
    rev: Packed,
    last_seen: u64,
    prev: u32,
    next: u32,
    fwd_b: [u32; 2],
    rev_b: [u32; 2],
    state: FlowState,
    used: bool,
}

impl Entry {
    /// An unused entry (fill a new storage slice with it).
    pub const EMPTY: Entry = Entry {
        fwd: Packed([0; 5]),
        rev: Packed([0; 5]),
        last_seen: 0,
        prev: NONE,
        next: NONE,
        fwd_b: [0; 2],
        rev_b: [0; 2],
        state: FlowState::UdpNew,
        used: false,
    };

    /// Its flow.
    fn flow(&self) -> Flow {
        Flow {
            key: FlowKey {
                protocol: self.fwd.protocol(),
                src: self.fwd.a().endpoint(),
                dst: self.fwd.b().endpoint(),
            },
            proxy: self.rev.a().endpoint(),
            last_seen: self.last_seen,
            state: self.state,
        }
    }

    /// True when its flow has expired at `now` under each state's
    /// `timeouts` ([`FlowState::list`] order).
    #[inline(always)]
    fn expired(&self, timeouts: &[u64; STATES], now: u64) -> bool {
        let timeout = timeouts.get(self.state.list()).copied().unwrap_or(0);
        now >= self.last_seen.saturating_add(timeout)
    }

    fn key(&self, reverse: bool) -> &Packed {
        if reverse { &self.rev } else { &self.fwd }
    }
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
    /// Each state's timeout (from `cfg`).
    timeouts: [u64; STATES],
    /// The hash's secret words (from the seed).
    secret: [u64; 5],
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
#[inline(always)]
fn fold_mul(x: u64, k: u64) -> u64 {
    let p = u128::from(x).wrapping_mul(u128::from(k));
    (p as u64) ^ ((p >> 64) as u64)
}

/// Odd constants from the fractional part of π (as in wyhash), from which
/// the secret words are derived.
const K: [u64; 5] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
];

/// The hash's secret words for `seed`: each a folded multiply of the seed
/// with one constant, made odd (never 0, so no word cancels a multiply).
fn secret(seed: u64) -> [u64; 5] {
    K.map(|k| fold_mul(seed ^ k, k.rotate_left(29) | 1) | 1)
}

/// Each state's timeout under `cfg`, indexed by [`FlowState::list`].
fn timeouts(cfg: &Config) -> [u64; STATES] {
    [
        FlowState::SynSent,
        FlowState::Established,
        FlowState::Closing,
        FlowState::UdpNew,
        FlowState::UdpReplied,
    ]
    .map(|s| cfg.timeout(s))
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
            timeouts: timeouts(&cfg),
            secret: secret(seed),
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
        self.timeouts = timeouts(&cfg);
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

    #[inline(always)]
    fn mask(&self) -> usize {
        self.capacity().wrapping_mul(2).wrapping_sub(1)
    }

    #[inline(always)]
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

    /// The used entry `id`.
    fn used(&self, id: u32) -> Option<&Entry> {
        self.entry(id).filter(|e| e.used)
    }

    fn flow(&self, id: u32) -> Option<Flow> {
        self.used(id).map(Entry::flow)
    }

    /// True when `e`'s flow has expired at `now`.
    #[inline(always)]
    fn is_expired(&self, e: &Entry, now: u64) -> bool {
        e.expired(&self.timeouts, now)
    }

    fn bucket(&self, reverse: bool, i: usize) -> u32 {
        match self.store.as_ref().get(i >> 1) {
            Some(e) => {
                let b = if reverse { &e.rev_b } else { &e.fwd_b };
                b.get(i & 1).copied().unwrap_or(0)
            }
            None => 0,
        }
    }

    fn set_bucket(&mut self, reverse: bool, i: usize, v: u32) {
        if let Some(e) = self.store.as_mut().get_mut(i >> 1) {
            let b = if reverse { &mut e.rev_b } else { &mut e.fwd_b };
            if let Some(s) = b.get_mut(i & 1) {
                *s = v;
            }
        }
    }

    #[inline(always)]
    fn home(&self, k: &Packed) -> usize {
        (k.hash(&self.secret) as usize) & self.mask()
    }

    /// The id of the entry whose forward (or reverse) key is `k`, and its bucket.
    #[inline(always)]
    fn find(&self, reverse: bool, k: &Packed) -> Option<(u32, usize)> {
        let store = self.store.as_ref();
        let mask = self.mask();
        let mut i = self.home(k);
        // Every bucket at most once (`left` more after this one).
        let mut left = mask;
        loop {
            // Bucket `i` is the `i & 1` one of entry `i / 2` (in bounds: the
            // mask is twice the capacity, less one).
            let slot = store.get(i >> 1)?;
            let pair = if reverse { &slot.rev_b } else { &slot.fwd_b };
            let e = if i & 1 == 0 { pair[0] } else { pair[1] };
            if e == NONE {
                return None;
            }
            if let Some(en) = pos(e).and_then(|p| store.get(p))
                && en.used
                && en.key(reverse).same(k)
            {
                return Some((e, i));
            }
            if left == 0 {
                return None;
            }
            left = left.wrapping_sub(1);
            i = i.wrapping_add(1) & mask;
        }
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
            let Some(en) = self.used(e) else { break };
            let k = self.home(en.key(reverse));
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
        let (prev, next, list) = (e.prev, e.next, e.state.list());
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
        let Some(list) = self.used(id).map(|e| e.state.list()) else {
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
        let Some((fwd, rev)) = self.used(id).map(|e| (e.fwd, e.rev)) else {
            return;
        };
        self.unlink(id);
        if let Some((_, i)) = self.find(false, &fwd) {
            self.index_remove(false, i);
        }
        if let Some((_, i)) = self.find(true, &rev) {
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
            e.state = e.state.next(flags, outbound);
            e.last_seen = e.last_seen.max(now);
        }
        self.push_tail(id);
    }

    /// Removes up to `budget` expired flows from the head of each state list.
    fn reclaim(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0usize;
        for list in 0..STATES {
            for _ in 0..budget {
                let head = self.heads.get(list).copied().unwrap_or(NONE);
                match self.used(head) {
                    Some(e) if self.is_expired(e, now) => {
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
            self.used(id).map(|e| (e.last_seen, id))
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
        let expired = self.used(id).is_some_and(|e| self.is_expired(e, now));
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
        let (id, _) = self.find(false, &Packed::new(key.protocol, &key.src, &key.dst))?;
        if self.drop_if_expired(id, now) {
            return None;
        }
        self.flow(id)
    }

    /// An outbound packet of flow `key` with TCP `flags`: the proxy endpoint of
    /// a live tracked flow (refreshed), or None.
    pub fn outbound(&mut self, key: &FlowKey, flags: u8, now: u64) -> Option<Endpoint> {
        let k = Packed::new(key.protocol, &key.src, &key.dst);
        self.outbound_packed(&k, flags, now).map(|p| p.endpoint())
    }

    /// [`Self::outbound`] for a key already packed (protocol, client,
    /// original destination): the proxy as the fast path writes it.
    #[inline(always)]
    pub fn outbound_packed(&mut self, k: &Packed, flags: u8, now: u64) -> Option<PackedEndpoint> {
        let now = self.tick(now);
        let (id, _) = self.find(false, k)?;
        self.refresh(id, flags, true, now, |e| e.rev.a())
    }

    /// A packet of live entry `id`'s flow with TCP `flags` (`outbound`: from
    /// the client): `pick` of its entry, refreshed; an expired flow is
    /// removed instead (`None`). One entry lookup for the common case of a
    /// flow's packets in a row: already the most recent of its list (no next)
    /// and its state unchanged, only the time moves; otherwise
    /// [`Self::touch`].
    #[inline(always)]
    fn refresh<R>(
        &mut self,
        id: u32,
        flags: u8,
        outbound: bool,
        now: u64,
        pick: impl Fn(&Entry) -> R,
    ) -> Option<R> {
        let p = pos(id)?;
        let timeouts = &self.timeouts;
        let e = self.store.as_mut().get_mut(p)?;
        if !e.used {
            return None;
        }
        let expired = e.expired(timeouts, now);
        if !expired && e.next == NONE && e.state.next(flags, outbound) == e.state {
            e.last_seen = e.last_seen.max(now);
            return Some(pick(e));
        }
        if expired {
            self.expire(id);
            return None;
        }
        self.touch(id, flags, outbound, now);
        self.entry(id).map(pick)
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
        self.inbound_packed(&Packed::new(protocol, from, to), flags, now)
            .map(|p| p.endpoint())
    }

    /// [`Self::inbound`] for a key already packed (protocol, from, to): the
    /// original destination as the fast path writes it.
    #[inline(always)]
    pub fn inbound_packed(&mut self, k: &Packed, flags: u8, now: u64) -> Option<PackedEndpoint> {
        let now = self.tick(now);
        let (id, _) = self.find(true, k)?;
        self.refresh(id, flags, false, now, |e| e.fwd.b())
    }

    /// The live flow `key`, looked up without any side effect: no refresh of
    /// its idle time, no TCP state change, no removal of an expired entry (it
    /// reads as absent). For packets that concern a flow without being part of
    /// it (ICMP errors quoting one of its packets).
    pub fn peek_forward(&self, key: &FlowKey, now: u64) -> Option<Flow> {
        self.peek(false, &Packed::new(key.protocol, &key.src, &key.dst), now)
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
        self.peek(true, &Packed::new(protocol, from, to), now)
    }

    fn peek(&self, reverse: bool, k: &Packed, now: u64) -> Option<Flow> {
        let (id, _) = self.find(reverse, k)?;
        let e = self.used(id)?;
        (!self.is_expired(e, now.max(self.clock))).then(|| e.flow())
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
        let fwd = Packed::new(key.protocol, &key.src, &key.dst);
        let rev = Packed::new(key.protocol, &proxy, &key.src);
        if let Some((id, _)) = self.find(false, &fwd) {
            // Tracked already (a new connection on the same 5-tuple): replaced.
            self.remove_entry(id);
        }
        if let Some((id, _)) = self.find(true, &rev)
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
        let Some(e) = self.entry_mut(id) else {
            return Err(InsertError::Full);
        };
        *e = Entry {
            fwd,
            rev,
            last_seen: now,
            prev: NONE,
            next: NONE,
            fwd_b: e.fwd_b,
            rev_b: e.rev_b,
            state,
            used: true,
        };
        let flow = e.flow();
        self.len = self.len.wrapping_add(1);
        self.inserted = self.inserted.wrapping_add(1);
        self.push_tail(id);
        let (fh, rh) = (self.home(&fwd), self.home(&rev));
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
        self.set_config(cfg);
        self.secret = secret(seed);
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
        for e in self.store.as_ref().iter().filter(|e| e.used) {
            if self.is_expired(e, now) {
                continue;
            }
            let f = e.flow();
            if f.key.src != *client {
                continue;
            }
            if f.key.protocol == proto::TCP {
                return Some(f);
            }
            found = found.or(Some(f));
        }
        found
    }

    /// The tracked flows (expired ones not yet reclaimed included).
    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        self.store
            .as_ref()
            .iter()
            .filter(|e| e.used)
            .map(Entry::flow)
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
                if !e.used || e.state != s {
                    return Err("a list holds an entry of another state or a free one");
                }
                if e.prev != prev {
                    return Err("a list's back link is wrong");
                }
                if e.last_seen < last {
                    return Err("a list is out of order of last packet");
                }
                last = e.last_seen;
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
        for (i, e) in self
            .store
            .as_ref()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.used)
        {
            let id = u32::try_from(i.wrapping_add(1)).ok();
            if self.find(false, &e.fwd).map(|(id, _)| id) != id {
                return Err("the forward index misses a flow");
            }
            if self.find(true, &e.rev).map(|(id, _)| id) != id {
                return Err("the reverse index misses a flow");
            }
            if e.fwd.protocol() != e.rev.protocol() || e.fwd.a() != e.rev.b() {
                return Err("a flow's two keys disagree");
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
