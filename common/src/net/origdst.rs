//! The original destinations of redirected connections, keyed by the client's
//! address as the proxy sees it (the connecting socket's local address).
//!
//! A fixed-capacity open-addressing hash table (linear probing, backward-shift
//! deletion) over the caller's storage: no allocation, no panics. When full,
//! [`Table::insert`] fails and the caller decides (the socket filter then
//! reports the lookup as unavailable for that connection).

use super::addr::{Endpoint, IpAddr};

/// What is remembered about one redirected connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    /// Where the client asked to connect.
    pub dst: Endpoint,
    /// The pid that created the socket.
    pub pid: u32,
    /// The number of the rule that redirected it.
    pub rule: u32,
}

/// One slot of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    used: bool,
    key: Endpoint,
    value: Original,
}

impl Default for Slot {
    fn default() -> Self {
        let none = Endpoint::new(IpAddr::V4([0; 4]), 0);
        Slot {
            used: false,
            key: none,
            value: Original {
                dst: none,
                pid: 0,
                rule: 0,
            },
        }
    }
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The table, over storage `S` (its length is the capacity).
#[derive(Debug)]
pub struct Table<S> {
    slots: S,
    len: usize,
}

fn hash(k: &Endpoint) -> u64 {
    // FNV-1a over family, address and port.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let fam = [k.addr.octets().len() as u8];
    let port = k.port.to_be_bytes();
    for b in fam.iter().chain(k.addr.octets()).chain(port.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<S: AsRef<[Slot]> + AsMut<[Slot]>> Table<S> {
    /// An empty table over `slots` (which are cleared).
    pub fn new(mut slots: S) -> Self {
        slots.as_mut().iter_mut().for_each(|s| *s = Slot::default());
        Table { slots, len: 0 }
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, k: &Endpoint) -> usize {
        let cap = self.slots.as_ref().len() as u64;
        hash(k).checked_rem(cap).unwrap_or(0) as usize
    }

    fn next(&self, i: usize) -> usize {
        let cap = self.slots.as_ref().len();
        let n = i.saturating_add(1);
        if n >= cap { 0 } else { n }
    }

    fn find(&self, k: &Endpoint) -> Option<usize> {
        let slots = self.slots.as_ref();
        let mut i = self.home(k);
        for _ in 0..slots.len() {
            let s = slots.get(i)?;
            if !s.used {
                return None;
            }
            if s.key == *k {
                return Some(i);
            }
            i = self.next(i);
        }
        None
    }

    /// Looks up the connection whose client address is `client`.
    pub fn get(&self, client: &Endpoint) -> Option<Original> {
        let k = client.canonical();
        self.find(&k)
            .and_then(|i| self.slots.as_ref().get(i))
            .map(|s| s.value)
    }

    /// Records (or replaces) the entry for `client`.
    pub fn insert(&mut self, client: &Endpoint, value: Original) -> Result<(), Full> {
        let k = client.canonical();
        if let Some(i) = self.find(&k) {
            if let Some(s) = self.slots.as_mut().get_mut(i) {
                s.value = value;
            }
            return Ok(());
        }
        // Keep one slot free so probes always terminate early.
        if self.len.saturating_add(1) >= self.slots.as_ref().len() {
            return Err(Full);
        }
        let mut i = self.home(&k);
        loop {
            let free = match self.slots.as_ref().get(i) {
                Some(s) => !s.used,
                None => return Err(Full),
            };
            if free {
                break;
            }
            i = self.next(i);
        }
        if let Some(s) = self.slots.as_mut().get_mut(i) {
            *s = Slot {
                used: true,
                key: k,
                value,
            };
            self.len = self.len.saturating_add(1);
        }
        Ok(())
    }

    /// Removes the entry for `client`; returns it.
    pub fn remove(&mut self, client: &Endpoint) -> Option<Original> {
        let k = client.canonical();
        let mut hole = self.find(&k)?;
        let removed = self.slots.as_ref().get(hole).map(|s| s.value);
        let cap = self.slots.as_ref().len();
        // Backward-shift deletion: move later entries of the cluster into the hole
        // when their home position does not lie (cyclically) in (hole, j].
        let mut j = hole;
        loop {
            j = self.next(j);
            let Some(s) = self.slots.as_ref().get(j).copied() else {
                break;
            };
            if !s.used {
                break;
            }
            let home = self.home(&s.key);
            let dist = |from: usize, to: usize| {
                if to >= from {
                    to.saturating_sub(from)
                } else {
                    cap.saturating_sub(from).saturating_add(to)
                }
            };
            if dist(home, j) >= dist(hole, j) {
                if let Some(h) = self.slots.as_mut().get_mut(hole) {
                    *h = s;
                }
                hole = j;
            }
        }
        if let Some(h) = self.slots.as_mut().get_mut(hole) {
            *h = Slot::default();
        }
        self.len = self.len.saturating_sub(1);
        removed
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "host tests"
)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ep(i: u16) -> Endpoint {
        Endpoint::new(IpAddr::V4([127, 0, 0, 1]), i)
    }

    #[test]
    fn insert_get_remove_and_full() {
        let mut t = Table::new(vec![Slot::default(); 4]);
        let o = Original {
            dst: ep(80),
            pid: 1,
            rule: 0,
        };
        for i in 0..3 {
            t.insert(&ep(i), o).unwrap();
        }
        assert_eq!(t.insert(&ep(9), o), Err(Full));
        assert_eq!(t.get(&ep(1)), Some(o));
        assert_eq!(t.remove(&ep(1)), Some(o));
        assert_eq!(t.get(&ep(1)), None);
        assert_eq!(t.get(&ep(2)), Some(o));
        let mapped = Endpoint::new(IpAddr::V6(IpAddr::V4([127, 0, 0, 1]).to_v6_mapped()), 2);
        assert_eq!(
            t.get(&mapped),
            Some(o),
            "IPv4-mapped clients find IPv4 entries"
        );
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u16..24), 0..200)) {
            let mut t = Table::new(vec![Slot::default(); 17]);
            let mut m = HashMap::new();
            for (ins, k) in ops {
                let v = Original { dst: ep(k), pid: u32::from(k), rule: 1 };
                if ins {
                    if t.insert(&ep(k), v).is_ok() { m.insert(k, v); } else { prop_assert!(m.len() >= 16 && !m.contains_key(&k)); }
                } else {
                    prop_assert_eq!(t.remove(&ep(k)), m.remove(&k));
                }
                prop_assert_eq!(t.len(), m.len());
                for k in 0..24 { prop_assert_eq!(t.get(&ep(k)), m.get(&k).copied()); }
            }
        }
    }
}
