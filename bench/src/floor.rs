//! The floor: what translating one packet of a tracked flow costs at the
//! least, written for this benchmark as plainly as C at -O2 would be, so
//! every run prints the filter's paths as a ratio to it.
//!
//! One operation, on the same 52-byte IPv4 TCP header prefix as `output-v4`:
//! copy the prefix into the work buffer (as `output-v4` does), parse IPv4 +
//! TCP (version, IHL, total length against the packet, protocol, the ports
//! within the prefix), one probe of an open-addressing hash table at 50 %
//! load (a packed 16-byte key, one multiply-fold hash, linear probing), and
//! two RFC 1624 incremental updates (the IPv4 header checksum for the new
//! address, the TCP checksum for the new address and port), writing the new
//! address and port. No flow state, expiry, LRU, proxy check, ICMP handling,
//! IPv6 or UDP: those are what the filter pays above the floor.
//!
//! The self-check compares the floor's rewritten bytes with `filter::output`'s
//! for the same packet: the floor does the same rewrite, not less.

/// A packed flow key: (source address << 32 | destination address),
/// (source port << 32 | destination port << 16 | protocol).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Key(pub u64, pub u64);

/// One slot: key and value (the proxy's address and port; 0 = empty).
#[derive(Clone, Copy, Default)]
pub struct Slot {
    key: Key,
    addr: u32,
    port: u16,
    used: bool,
}

/// Open addressing, linear probing, power-of-two capacity.
pub struct Table {
    slots: Vec<Slot>,
    mask: usize,
    seed: u64,
}

fn hash(k: Key, seed: u64) -> u64 {
    let p = u128::from(k.0 ^ seed).wrapping_mul(u128::from(k.1 ^ 0x9e37_79b9_7f4a_7c15));
    (p as u64) ^ ((p >> 64) as u64)
}

impl Table {
    pub fn new(capacity: usize, seed: u64) -> Table {
        Table {
            slots: vec![Slot::default(); capacity],
            mask: capacity - 1,
            seed,
        }
    }

    pub fn insert(&mut self, key: Key, addr: u32, port: u16) -> bool {
        let mut i = hash(key, self.seed) as usize & self.mask;
        for _ in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if !s.used || s.key == key {
                *s = Slot {
                    key,
                    addr,
                    port,
                    used: true,
                };
                return true;
            }
            i = (i + 1) & self.mask;
        }
        false
    }

    #[inline]
    fn get(&self, key: Key) -> Option<(u32, u16)> {
        let mut i = hash(key, self.seed) as usize & self.mask;
        loop {
            let s = self.slots.get(i)?;
            if !s.used {
                return None;
            }
            if s.key == key {
                return Some((s.addr, s.port));
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }
}

#[inline]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` with the `~m + m'` terms summed.
#[inline]
fn update(hc: u16, delta: u64) -> u16 {
    !fold(u64::from(!hc) + delta)
}

/// Parses `p` (the first bytes of a `packet_len`-byte packet), looks the flow
/// up and rewrites its destination to the proxy; returns the bytes changed
/// (0: not translated).
#[inline(never)]
pub fn translate(p: &mut [u8], packet_len: usize, table: &Table) -> usize {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return 0;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl || total > packet_len || p[9] != 6 || p.len() < ihl + 18 {
        return 0;
    }
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    let t = &mut p[ihl..];
    let sport = u16::from_be_bytes([t[0], t[1]]);
    let dport = u16::from_be_bytes([t[2], t[3]]);
    let key = Key(
        u64::from(src) << 32 | u64::from(dst),
        u64::from(sport) << 32 | u64::from(dport) << 16 | 6,
    );
    let Some((to, to_port)) = table.get(key) else {
        return 0;
    };
    let da = u64::from(!dst) + u64::from(to);
    let tc = u16::from_be_bytes([t[16], t[17]]);
    let tc = update(tc, da + u64::from(!dport) + u64::from(to_port));
    t[16..18].copy_from_slice(&tc.to_be_bytes());
    t[2..4].copy_from_slice(&to_port.to_be_bytes());
    let hc = u16::from_be_bytes([p[10], p[11]]);
    p[10..12].copy_from_slice(&update(hc, da).to_be_bytes());
    p[16..20].copy_from_slice(&to.to_be_bytes());
    ihl + 18
}

/// The key `translate` looks up for a flow.
pub fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Key {
    Key(
        u64::from(u32::from_be_bytes(src)) << 32 | u64::from(u32::from_be_bytes(dst)),
        u64::from(sport) << 32 | u64::from(dport) << 16 | 6,
    )
}
