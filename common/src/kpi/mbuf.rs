//! Views of the mbuf chains the kernel lends to filter callbacks
//! (com.apple.kpi.bsd, bsd/sys/kpi_mbuf.h), with the ownership rules in the
//! types:
//!
//! - A [`Packet`] is a chain lent by the stack through a callback's `mbuf_t *`
//!   slot. Returning it in [`Verdict::Pass`](super::ipf::Verdict) gives it back.
//! - Operations that consume the chain (`free`, re-injection, a *failed*
//!   `mbuf_pullup`, which frees the whole chain) take the `Packet` by value and
//!   return [`Taken`]: proof that the stack no longer owns it, which the
//!   callback must return (the trampoline then answers `EJUSTRETURN`). So a
//!   callback can neither leak a chain nor touch one it gave away.
//! - Reads and writes that may straddle mbufs go through `mbuf_copydata` and
//!   `mbuf_copyback`; [`Packet::pullup`] makes a prefix contiguous.

use core::ffi::c_void;
use core::marker::PhantomData;

use super::errno::{EINVAL, Errno};
use crate::sys;

/// Proof that a chain is no longer the stack's: it was freed, re-injected or
/// freed by a failed pullup.
#[derive(Debug)]
#[must_use = "return Verdict::Taken so the stack does not touch the chain again"]
pub struct Taken {
    _private: (),
}

impl Taken {
    pub(crate) fn new() -> Self {
        Taken { _private: () }
    }
}

/// An mbuf chain with a packet header, lent by the stack to a callback.
///
/// INVARIANT: `*slot` is a non-NULL `mbuf_t` the stack lent for the duration of
/// the callback (lifetime `'a`), and this `Packet` is the only handle to it.
#[derive(Debug)]
pub struct Packet<'a> {
    slot: *mut sys::mbuf_t,
    _lent: PhantomData<&'a mut sys::mbuf_t>,
}

impl<'a> Packet<'a> {
    /// Wraps the callback's `mbuf_t *data` slot.
    ///
    /// # Safety
    /// `slot` must be the `mbuf_t *` a filter callback received, valid for `'a`,
    /// and not otherwise used while the `Packet` lives.
    pub(crate) unsafe fn from_slot(slot: *mut sys::mbuf_t) -> Option<Packet<'a>> {
        if slot.is_null() {
            return None;
        }
        // SAFETY: the caller's contract: `slot` is readable.
        let m = unsafe { slot.read() };
        if m.is_null() {
            return None;
        }
        Some(Packet {
            slot,
            _lent: PhantomData,
        })
    }

    fn mbuf(&self) -> sys::mbuf_t {
        // SAFETY: INVARIANT: `slot` is valid for `'a` and holds the chain.
        unsafe { self.slot.read() }
    }

    /// The packet's length (`mbuf_pkthdr_len`).
    pub fn len(&self) -> usize {
        // SAFETY: a live chain with a packet header (filters get packets).
        unsafe { sys::mbuf_pkthdr_len(self.mbuf()) }
    }

    /// True when the packet has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `out.len()` bytes from `offset` (`mbuf_copydata`; straddles mbufs).
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) -> Result<(), Errno> {
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: `out` is writable for `out.len()` bytes; the chain is live.
        let r = unsafe {
            sys::mbuf_copydata(
                self.mbuf(),
                offset,
                out.len(),
                out.as_mut_ptr().cast::<c_void>(),
            )
        };
        Errno::check(r)
    }

    /// Writes `data` at `offset` (`mbuf_copyback`, never waiting). Within the
    /// packet's length this only overwrites bytes.
    pub fn copy_in(&mut self, offset: usize, data: &[u8]) -> Result<(), Errno> {
        if data.is_empty() {
            return Ok(());
        }
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len())
        {
            return Err(EINVAL);
        }
        // SAFETY: `data` is readable for `data.len()` bytes; the chain is live
        // and the range lies within it (checked above), so nothing is allocated.
        let r = unsafe {
            sys::mbuf_copyback(
                self.mbuf(),
                offset,
                data.len(),
                data.as_ptr().cast::<c_void>(),
                sys::MBUF_DONTWAIT,
            )
        };
        Errno::check(r)
    }

    /// [`Packet::copy_in`] for a caller that read the packet's length already:
    /// `packet_len` is [`Packet::len`] as read in this callback (a lent
    /// chain's length does not change), which saves asking the kernel again.
    pub fn copy_in_within(
        &mut self,
        offset: usize,
        data: &[u8],
        packet_len: usize,
    ) -> Result<(), Errno> {
        if data.is_empty() {
            return Ok(());
        }
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > packet_len)
        {
            return Err(EINVAL);
        }
        // SAFETY: `data` is readable for `data.len()` bytes; the chain is live
        // and the range lies within its length (checked above against the
        // length the kernel reported for this chain), so nothing is allocated.
        let r = unsafe {
            sys::mbuf_copyback(
                self.mbuf(),
                offset,
                data.len(),
                data.as_ptr().cast::<c_void>(),
                sys::MBUF_DONTWAIT,
            )
        };
        Errno::check(r)
    }

    /// Makes the first `len` bytes contiguous in the first mbuf
    /// (`mbuf_pullup`). On failure the kernel has freed the whole chain: the
    /// packet is gone and only [`Taken`] remains.
    pub fn pullup(self, len: usize) -> Result<Packet<'a>, Taken> {
        // SAFETY: `slot` is the callback's in/out mbuf_t *; pullup may replace
        // the chain's head there, or free the chain and store NULL.
        let r = unsafe { sys::mbuf_pullup(self.slot, len) };
        if r == 0 && !self.mbuf().is_null() {
            Ok(self)
        } else {
            Err(Taken::new())
        }
    }

    /// The first `len` bytes, when the first mbuf holds them.
    pub fn contiguous(&self, len: usize) -> Option<&[u8]> {
        let m = self.mbuf();
        // SAFETY: a live mbuf.
        if unsafe { sys::mbuf_len(m) } < len {
            return None;
        }
        // SAFETY: a live mbuf.
        let p = unsafe { sys::mbuf_data(m) };
        if p.is_null() {
            return None;
        }
        // SAFETY: the first mbuf holds at least `len` bytes at `mbuf_data`,
        // valid while the chain is lent to us and not changed (we hold `&self`).
        Some(unsafe { core::slice::from_raw_parts(p.cast::<u8>(), len) })
    }

    /// The first mbuf's bytes, readable and writable in place (`mbuf_len`,
    /// `mbuf_data`: two calls, where copying headers out and back costs
    /// `mbuf_pkthdr_len`, `mbuf_copydata` and `mbuf_copyback`). Writing
    /// there is what `mbuf_copyback` does for bytes within the first mbuf.
    /// `None` when the first mbuf is empty.
    #[inline]
    pub fn first_mut(&mut self) -> Option<First<'_>> {
        let m = self.mbuf();
        // SAFETY: a live mbuf.
        let len = unsafe { sys::mbuf_len(m) };
        if len == 0 {
            return None;
        }
        // SAFETY: a live mbuf.
        let p = unsafe { sys::mbuf_data(m) };
        if p.is_null() {
            return None;
        }
        // The view borrows the packet mutably, so it cannot outlive the loan
        // nor meet a KPI that consumes or changes the chain.
        // SAFETY: the first mbuf holds `len` bytes at `mbuf_data`, valid while
        // the chain is lent to this callback; `&mut self`: the only access.
        let bytes = unsafe { core::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        Some(First {
            bytes,
            csum: Csum {
                m,
                _lent: PhantomData,
            },
        })
    }

    /// Completes checksums the stack left to hardware (IPv4 header, deferred
    /// TCP/UDP), so the bytes are final before a rewrite. `family` is
    /// `AF_INET`/`AF_INET6`, `ip_offset` where the IP header starts.
    pub fn outbound_finalize(&mut self, family: i32, ip_offset: usize) {
        let family = u32::try_from(family).unwrap_or(0);
        // SAFETY: a live chain with a packet header.
        unsafe { sys::mbuf_outbound_finalize(self.mbuf(), family, ip_offset) }
    }

    /// True when the stack left the TCP/UDP checksum to the interface
    /// (`mbuf_get_csum_requested`: `MBUF_CSUM_REQ_TCP`/`UDP` or their IPv6
    /// forms): the checksum field then holds the pseudo-header sum, which a
    /// rewrite adjusts instead of completing the checksum in software
    /// (`translate::L4Sum::Deferred`).
    pub fn l4_csum_deferred(&self) -> bool {
        l4_csum_deferred(self.mbuf())
    }

    /// Tells the stack an inbound packet was modified: checksums verified by
    /// hardware must be verified again.
    #[inline]
    pub fn inbound_modified(&mut self) {
        // SAFETY: a live chain with a packet header.
        unsafe { sys::mbuf_inbound_modified(self.mbuf()) }
    }

    /// Frees the chain.
    pub fn free(self) -> Taken {
        // SAFETY: the chain is lent to us; after this the callback returns
        // EJUSTRETURN (through Taken) so the stack does not free it again.
        unsafe { sys::mbuf_freem(self.mbuf()) };
        Taken::new()
    }

    /// The raw chain, given away (the caller must hand it to a KPI that
    /// consumes it).
    pub(crate) fn into_raw(self) -> sys::mbuf_t {
        self.mbuf()
    }
}

/// The first mbuf of a [`Packet`] ([`Packet::first_mut`]).
#[derive(Debug)]
pub struct First<'p> {
    /// Its bytes.
    pub bytes: &'p mut [u8],
    /// The packet's checksum request, for asking while `bytes` is borrowed.
    pub csum: Csum<'p>,
}

/// The checksum-offload state of a packet whose first mbuf is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Csum<'p> {
    m: sys::mbuf_t,
    _lent: PhantomData<&'p ()>,
}

impl Csum<'_> {
    /// [`Packet::l4_csum_deferred`].
    #[inline(always)]
    pub fn l4_deferred(&self) -> bool {
        l4_csum_deferred(self.m)
    }
}

/// `mbuf_get_csum_requested` of a live chain: a TCP/UDP checksum left to the
/// interface.
#[inline(always)]
fn l4_csum_deferred(m: sys::mbuf_t) -> bool {
    let mut req: sys::mbuf_csum_request_flags_t = 0;
    let mut value: u32 = 0;
    // SAFETY: a live chain with a packet header; both out-parameters are
    // writable u32s.
    let r = unsafe { sys::mbuf_get_csum_requested(m, &mut req, &mut value) };
    r == 0
        && req
            & (sys::MBUF_CSUM_REQ_TCP
                | sys::MBUF_CSUM_REQ_UDP
                | sys::MBUF_CSUM_REQ_TCPIPV6
                | sys::MBUF_CSUM_REQ_UDPIPV6)
            != 0
}
