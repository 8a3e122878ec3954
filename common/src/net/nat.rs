//! The IP filter's NAT table: flows keyed by their 5-tuple, created on the first
//! outbound packet a rule redirects, mapping the original destination to the
//! proxy; replies from the proxy are looked up by the reverse key and
//! rewritten back to the original destination.
//!
//! Design:
//! - **Bounded, no allocation**: `N` flow entries and two open-addressing
//!   indexes (forward: client → original destination; reverse: proxy →
//!   client) of `SLOTS` buckets each (a power of two ≥ 2·N, checked at compile
//!   time), all inline, so the table can live in a kext's static.
//! - **O(1) lookups**: keyed hashing (a per-table seed), linear probing,
//!   backward-shift deletion (no tombstones, so probe chains never degrade).
//! - **Expiry** (lazy, with a clock hand): a TCP flow expires
//!   [`Config::tcp_closed_grace_ms`] after a RST or after FINs in both
//!   directions, otherwise after [`Config::tcp_idle_ms`] without packets; UDP
//!   and other protocols after [`Config::udp_idle_ms`]. Lookups drop expired
//!   flows they meet; each insertion sweeps a few entries
//!   ([`SWEEP_PER_INSERT`]). A SYN on a closed flow reopens it (port reuse).
//! - **When full**: after the sweep, a new flow is refused
//!   ([`InsertError::Full`]); existing flows are never evicted while live (that
//!   would break them silently). The IP filter drops the refused packet and
//!   counts it; TCP retries its SYN later, when flows may have expired.
//! - **Collisions**: a new flow whose reverse key (proxy, client endpoint,
//!   protocol) is already used by another live flow (the same client port
//!   redirected from two destinations to one proxy) is refused
//!   ([`InsertError::Collision`]): replies could not be told apart.
//! - **Concurrency**: the table is plain data behind `&mut self`. The kext keeps
//!   it behind a non-blocking try-lock (`common::kpi::ipf::TryLock`): callbacks
//!   on other CPUs never wait for it; a callback that cannot take it at once
//!   (after a short bounded spin) drops the packet and counts it (TCP
//!   retransmits), because a filter must never block in `ipf_output`.

use super::wire::ip::Addr;
use super::wire::{proto, tcp};

/// Entries swept (expired ones removed) on each insertion.
pub const SWEEP_PER_INSERT: usize = 8;

/// An address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The address.
    pub addr: Addr,
    /// The port (0 for protocols without ports).
    pub port: u16,
}

impl From<Endpoint> for super::addr::Endpoint {
    fn from(e: Endpoint) -> Self {
        super::addr::Endpoint::new(e.addr.into(), e.port)
    }
}

impl From<super::addr::Endpoint> for Endpoint {
    fn from(e: super::addr::Endpoint) -> Self {
        Endpoint {
            addr: e.addr.into(),
            port: e.port,
        }
    }
}

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
    /// TCP without packets for this long expires.
    pub tcp_idle_ms: u64,
    /// TCP after RST, or FIN both ways, expires this long after the last packet.
    pub tcp_closed_grace_ms: u64,
    /// UDP (and other protocols) without packets for this long expires.
    pub udp_idle_ms: u64,
}

impl Config {
    /// Defaults: TCP idle 2 h, closed grace 10 s, UDP idle 60 s.
    pub const DEFAULT: Config = Config {
        tcp_idle_ms: 7_200_000,
        tcp_closed_grace_ms: 10_000,
        udp_idle_ms: 60_000,
    };
}

/// Why a flow was not created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The table is full of live flows.
    Full,
    /// Another live flow uses the same reverse key.
    Collision,
}

const CLOSED_FIN_OUT: u8 = 1;
const CLOSED_FIN_IN: u8 = 2;
const CLOSED_RST: u8 = 4;

/// One translated flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The flow as the client sends it.
    pub key: FlowKey,
    /// Where its packets go instead of `key.dst`.
    pub proxy: Endpoint,
    /// Time of the last packet (either direction).
    pub last_seen: u64,
    close: u8,
}

impl Flow {
    fn expires_at(&self, cfg: &Config) -> u64 {
        let t = if self.key.protocol != proto::TCP {
            cfg.udp_idle_ms
        } else if self.close & CLOSED_RST != 0
            || self.close & (CLOSED_FIN_OUT | CLOSED_FIN_IN) == CLOSED_FIN_OUT | CLOSED_FIN_IN
        {
            cfg.tcp_closed_grace_ms
        } else {
            cfg.tcp_idle_ms
        };
        self.last_seen.saturating_add(t)
    }

    fn is_expired(&self, cfg: &Config, now: u64) -> bool {
        now >= self.expires_at(cfg)
    }

    fn is_closed(&self) -> bool {
        self.close & CLOSED_RST != 0 || self.close & 3 == 3
    }

    /// Records a packet with TCP `flags` (0 for other protocols).
    fn touch(&mut self, flags: u8, outbound: bool, now: u64) {
        if self.key.protocol == proto::TCP {
            if flags & tcp::SYN != 0 && flags & tcp::ACK == 0 && self.is_closed() {
                self.close = 0; // the client reuses the port: a new connection
            }
            if flags & tcp::RST != 0 {
                self.close |= CLOSED_RST;
            }
            if flags & tcp::FIN != 0 {
                self.close |= if outbound {
                    CLOSED_FIN_OUT
                } else {
                    CLOSED_FIN_IN
                };
            }
        }
        self.last_seen = self.last_seen.max(now);
    }

    fn rev_key(&self) -> (u8, Endpoint, Endpoint) {
        (self.key.protocol, self.proxy, self.key.src)
    }
}

/// An entry. `repr(u8)` with `Free` as tag 0 (and [`NONE`] = 0) makes a new
/// table all zero bytes, so a kext's `static` table is zero-fill (`__bss`),
/// not initialised data in the binary.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Slot {
    Free { next: u32 },
    Used(Flow),
}

/// End of the free list (entries are linked by 1-based id).
const NONE: u32 = 0;

/// The NAT table: `N` flows, indexes of `SLOTS` buckets (power of two ≥ 2·N).
#[derive(Debug, Clone)]
pub struct NatTable<const N: usize, const SLOTS: usize> {
    cfg: Config,
    seed: u64,
    entries: [Slot; N],
    /// Entries `fresh..N` were never used.
    fresh: usize,
    free_head: u32,
    len: usize,
    hand: usize,
    fwd: [u32; SLOTS],
    rev: [u32; SLOTS],
}

/// Statistics of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live entries (some may be expired and not yet swept).
    pub flows: usize,
    /// Capacity.
    pub capacity: usize,
}

fn mix(mut h: u64, b: u8) -> u64 {
    h ^= u64::from(b);
    h.wrapping_mul(0x0000_0100_0000_01b3)
}

fn hash_endpoint(mut h: u64, e: &Endpoint) -> u64 {
    h = mix(h, if matches!(e.addr, Addr::V4(_)) { 4 } else { 6 });
    for b in e.addr.as_bytes() {
        h = mix(h, *b);
    }
    let [p0, p1] = e.port.to_be_bytes();
    mix(mix(h, p0), p1)
}

fn hash3(seed: u64, protocol: u8, a: &Endpoint, b: &Endpoint) -> u64 {
    let h = hash_endpoint(
        hash_endpoint(mix(seed ^ 0xcbf2_9ce4_8422_2325, protocol), a),
        b,
    );
    // Final avalanche (splitmix64) so the low bits used for the bucket depend on all input.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<const N: usize, const SLOTS: usize> NatTable<N, SLOTS> {
    const CHECK: () = {
        assert!(N > 0 && N < (u32::MAX as usize));
        assert!(SLOTS.is_power_of_two());
        assert!(SLOTS >= 2 * N);
    };

    /// An empty, unconfigured table whose bytes are all zero, for a kext's
    /// `static` (which then costs nothing in the binary: zero-fill). All
    /// timeouts are 0 (every flow expires at once) until [`NatTable::configure`]
    /// sets them and the hash seed, which the kext does in its start routine
    /// before attaching its filters.
    pub const fn zeroed() -> Self {
        Self::new(
            Config {
                tcp_idle_ms: 0,
                tcp_closed_grace_ms: 0,
                udp_idle_ms: 0,
            },
            0,
        )
    }

    /// An empty table (usable in a `static`).
    pub const fn new(cfg: Config, seed: u64) -> Self {
        let () = Self::CHECK;
        NatTable {
            cfg,
            seed,
            entries: [Slot::Free { next: NONE }; N],
            fresh: 0,
            free_head: NONE,
            len: 0,
            hand: 0,
            fwd: [0; SLOTS],
            rev: [0; SLOTS],
        }
    }

    /// The timeouts.
    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Sets the timeouts (they apply to live flows too: expiry is computed
    /// from each flow's last packet when it is looked at).
    pub fn set_config(&mut self, cfg: Config) {
        self.cfg = cfg;
    }

    /// Re-keys the hash (only while empty) and sets the timeouts.
    pub fn configure(&mut self, cfg: Config, seed: u64) {
        self.cfg = cfg;
        if self.len == 0 {
            self.seed = seed;
        }
    }

    /// Live entries and capacity.
    pub fn stats(&self) -> Stats {
        Stats {
            flows: self.len,
            capacity: N,
        }
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
        SLOTS.wrapping_sub(1)
    }

    fn flow(&self, e: u32) -> Option<&Flow> {
        match self.entries.get(usize::try_from(e).ok()?.checked_sub(1)?) {
            Some(Slot::Used(f)) => Some(f),
            _ => None,
        }
    }

    fn fwd_home(&self, f: &Flow) -> usize {
        (hash3(self.seed, f.key.protocol, &f.key.src, &f.key.dst) as usize) & self.mask()
    }

    fn rev_home(&self, f: &Flow) -> usize {
        let (p, a, b) = f.rev_key();
        (hash3(self.seed, p, &a, &b) as usize) & self.mask()
    }

    /// Bucket index in `fwd` (or `rev`) holding the entry matching, or None.
    fn find(&self, reverse: bool, protocol: u8, a: &Endpoint, b: &Endpoint) -> Option<usize> {
        let idx = if reverse { &self.rev } else { &self.fwd };
        let mut i = (hash3(self.seed, protocol, a, b) as usize) & self.mask();
        for _ in 0..SLOTS {
            let e = *idx.get(i)?;
            if e == 0 {
                return None;
            }
            if let Some(f) = self.flow(e) {
                let hit = if reverse {
                    f.rev_key() == (protocol, *a, *b)
                } else {
                    f.key.protocol == protocol && f.key.src == *a && f.key.dst == *b
                };
                if hit {
                    return Some(i);
                }
            }
            i = i.wrapping_add(1) & self.mask();
        }
        None
    }

    fn index_insert(&mut self, reverse: bool, home: usize, e: u32) {
        let mask = self.mask();
        let idx = if reverse {
            &mut self.rev
        } else {
            &mut self.fwd
        };
        let mut i = home;
        for _ in 0..SLOTS {
            match idx.get_mut(i) {
                Some(s) if *s == 0 => {
                    *s = e;
                    return;
                }
                _ => i = i.wrapping_add(1) & mask,
            }
        }
    }

    /// Backward-shift deletion at bucket `hole`.
    fn index_remove(&mut self, reverse: bool, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        for _ in 0..SLOTS {
            j = j.wrapping_add(1) & mask;
            let e = *(if reverse { &self.rev } else { &self.fwd })
                .get(j)
                .unwrap_or(&0);
            if e == 0 {
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
            let idx = if reverse {
                &mut self.rev
            } else {
                &mut self.fwd
            };
            if let Some(s) = idx.get_mut(hole) {
                *s = e;
            }
            hole = j;
        }
        let idx = if reverse {
            &mut self.rev
        } else {
            &mut self.fwd
        };
        if let Some(s) = idx.get_mut(hole) {
            *s = 0;
        }
    }

    /// Removes entry `e` (1-based) from both indexes and frees it.
    fn remove_entry(&mut self, e: u32) {
        let Some(f) = self.flow(e).copied() else {
            return;
        };
        if let Some(i) = self.find(false, f.key.protocol, &f.key.src, &f.key.dst) {
            self.index_remove(false, i);
        }
        let (p, a, b) = f.rev_key();
        if let Some(i) = self.find(true, p, &a, &b) {
            self.index_remove(true, i);
        }
        let pos = usize::try_from(e).unwrap_or(0).wrapping_sub(1);
        if let Some(s) = self.entries.get_mut(pos) {
            *s = Slot::Free {
                next: self.free_head,
            };
            self.free_head = e;
            self.len = self.len.saturating_sub(1);
        }
    }

    fn entry_at(&self, reverse: bool, bucket: usize) -> u32 {
        *(if reverse { &self.rev } else { &self.fwd })
            .get(bucket)
            .unwrap_or(&0)
    }

    /// The flow `key` if it is tracked and live (an expired one is removed).
    pub fn get(&mut self, key: &FlowKey, now: u64) -> Option<Flow> {
        let b = self.find(false, key.protocol, &key.src, &key.dst)?;
        let e = self.entry_at(false, b);
        let f = *self.flow(e)?;
        if f.is_expired(&self.cfg, now) {
            self.remove_entry(e);
            return None;
        }
        Some(f)
    }

    /// An outbound packet of flow `key` with TCP `flags`: the proxy endpoint of
    /// a live tracked flow (refreshed), or None.
    pub fn outbound(&mut self, key: &FlowKey, flags: u8, now: u64) -> Option<Endpoint> {
        let b = self.find(false, key.protocol, &key.src, &key.dst)?;
        let e = self.entry_at(false, b);
        let cfg = self.cfg;
        let pos = usize::try_from(e).ok()?.checked_sub(1)?;
        let expired = match self.entries.get_mut(pos) {
            Some(Slot::Used(f)) => {
                // A new SYN may reopen a closed flow before it expires.
                if f.is_expired(&cfg, now) {
                    true
                } else {
                    f.touch(flags, true, now);
                    return Some(f.proxy);
                }
            }
            _ => return None,
        };
        if expired {
            self.remove_entry(e);
        }
        None
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
        let b = self.find(true, protocol, from, to)?;
        let e = self.entry_at(true, b);
        let cfg = self.cfg;
        let pos = usize::try_from(e).ok()?.checked_sub(1)?;
        match self.entries.get_mut(pos) {
            Some(Slot::Used(f)) if !f.is_expired(&cfg, now) => {
                f.touch(flags, false, now);
                return Some(f.key.dst);
            }
            Some(Slot::Used(_)) => {}
            _ => return None,
        }
        self.remove_entry(e);
        None
    }

    /// The live flow `key`, looked up without any side effect: no refresh of
    /// its idle time, no TCP state change, no removal of an expired entry (it
    /// reads as absent). For packets that concern a flow without being part of
    /// it (ICMP errors quoting one of its packets).
    pub fn peek_forward(&self, key: &FlowKey, now: u64) -> Option<Flow> {
        let b = self.find(false, key.protocol, &key.src, &key.dst)?;
        let f = *self.flow(self.entry_at(false, b))?;
        (!f.is_expired(&self.cfg, now)).then_some(f)
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
        let b = self.find(true, protocol, from, to)?;
        let f = *self.flow(self.entry_at(true, b))?;
        (!f.is_expired(&self.cfg, now)).then_some(f)
    }

    /// Tracks a new flow `key` → `proxy` (sweeping a few expired entries first).
    pub fn insert(
        &mut self,
        key: FlowKey,
        proxy: Endpoint,
        flags: u8,
        now: u64,
    ) -> Result<Flow, InsertError> {
        self.sweep(now, SWEEP_PER_INSERT);
        if let Some(b) = self.find(false, key.protocol, &key.src, &key.dst) {
            // Already tracked (or expired and about to be replaced).
            let e = self.entry_at(false, b);
            self.remove_entry(e);
        }
        if let Some(b) = self.find(true, key.protocol, &proxy, &key.src) {
            let e = self.entry_at(true, b);
            match self.flow(e) {
                Some(f) if f.is_expired(&self.cfg, now) => self.remove_entry(e),
                _ => return Err(InsertError::Collision),
            }
        }
        let e = if self.free_head != NONE {
            let e = self.free_head.wrapping_sub(1);
            let next = match self.entries.get(usize::try_from(e).unwrap_or(usize::MAX)) {
                Some(Slot::Free { next }) => *next,
                _ => NONE,
            };
            self.free_head = next;
            e
        } else if self.fresh < N {
            let e = u32::try_from(self.fresh).unwrap_or(u32::MAX);
            self.fresh = self.fresh.wrapping_add(1);
            e
        } else {
            return Err(InsertError::Full);
        };
        let mut flow = Flow {
            key,
            proxy,
            last_seen: now,
            close: 0,
        };
        flow.touch(flags, true, now);
        let Some(slot) = self
            .entries
            .get_mut(usize::try_from(e).unwrap_or(usize::MAX))
        else {
            return Err(InsertError::Full);
        };
        *slot = Slot::Used(flow);
        self.len = self.len.wrapping_add(1);
        let id = e.wrapping_add(1);
        let fh = self.fwd_home(&flow);
        let rh = self.rev_home(&flow);
        self.index_insert(false, fh, id);
        self.index_insert(true, rh, id);
        Ok(flow)
    }

    /// Removes up to `budget` expired entries, continuing where the last sweep
    /// stopped (a clock hand over the entries). Returns how many were removed.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0usize;
        for _ in 0..budget.min(N) {
            let pos = self.hand;
            self.hand = if pos.wrapping_add(1) >= N {
                0
            } else {
                pos.wrapping_add(1)
            };
            let expired = matches!(self.entries.get(pos), Some(Slot::Used(f)) if f.is_expired(&self.cfg, now));
            if expired {
                self.remove_entry(u32::try_from(pos).unwrap_or(u32::MAX).wrapping_add(1));
                removed = removed.wrapping_add(1);
            }
        }
        removed
    }

    /// Removes every flow.
    pub fn clear(&mut self) {
        *self = Self::new(self.cfg, self.seed);
    }

    /// The live flow whose client endpoint is `client` (a TCP flow before any
    /// other), for the control's original-destination lookup. A scan of the
    /// entries (O(N)): for user requests, never for the packet path.
    pub fn client_flow(&self, client: &Endpoint, now: u64) -> Option<Flow> {
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

    /// Iterates over the tracked flows (expired ones not yet swept included).
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.entries.iter().filter_map(|s| match s {
            Slot::Used(f) => Some(f),
            Slot::Free { .. } => None,
        })
    }
}

#[cfg(test)]
mod zeroed_tests {
    use super::*;

    fn ep(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint {
            addr: Addr::V4(a),
            port,
        }
    }

    #[test]
    fn a_zeroed_table_works_once_configured_and_reuses_freed_entries() {
        let mut t: NatTable<2, 4> = NatTable::zeroed();
        assert!(t.is_empty());
        t.configure(Config::DEFAULT, 0x1234);
        assert_eq!(t.config(), Config::DEFAULT);
        let key = |port| FlowKey {
            protocol: proto::UDP,
            src: ep([10, 0, 0, 1], port),
            dst: ep([203, 0, 113, 10], 53),
        };
        let proxy = ep([192, 0, 2, 1], 3128);
        assert!(t.insert(key(1000), proxy, 0, 0).is_ok());
        assert!(t.insert(key(1001), proxy, 0, 0).is_ok());
        assert_eq!(t.insert(key(1002), proxy, 0, 0), Err(InsertError::Full));
        // Expire both (UDP idle), then the free list must hand both entries out again.
        let later = Config::DEFAULT.udp_idle_ms + 1;
        assert_eq!(t.sweep(later, 8), 2);
        assert!(t.is_empty());
        for port in [2000, 2001] {
            assert!(t.insert(key(port), proxy, 0, later).is_ok(), "port {port}");
        }
        assert_eq!(t.insert(key(2002), proxy, 0, later), Err(InsertError::Full));
        let f = t
            .client_flow(&ep([10, 0, 0, 1], 2001), later)
            .map(|f| f.key.dst);
        assert_eq!(f, Some(ep([203, 0, 113, 10], 53)));
        assert_eq!(
            t.client_flow(&ep([10, 0, 0, 1], 1000), later),
            None,
            "expired and swept"
        );
        assert_eq!(
            t.client_flow(
                &ep([10, 0, 0, 1], 2001),
                later + Config::DEFAULT.udp_idle_ms
            ),
            None,
            "expired"
        );
        let back: Endpoint = crate::net::addr::Endpoint::from(proxy).into();
        assert_eq!(back, proxy);
        assert_eq!(t.outbound(&key(2001), 0, later), Some(proxy));
        assert_eq!(
            t.inbound(proto::UDP, &proxy, &ep([10, 0, 0, 1], 2000), 0, later),
            Some(ep([203, 0, 113, 10], 53))
        );
    }

    #[test]
    fn unconfigured_tables_expire_everything_at_once() {
        let mut t: NatTable<2, 4> = NatTable::zeroed();
        let k = FlowKey {
            protocol: proto::TCP,
            src: ep([10, 0, 0, 1], 1),
            dst: ep([203, 0, 113, 10], 80),
        };
        assert!(t.insert(k, ep([192, 0, 2, 1], 3128), tcp::SYN, 5).is_ok());
        assert_eq!(t.outbound(&k, tcp::ACK, 5), None);
    }
}
