//! mbuf KPIs (com.apple.kpi.bsd, bsd/sys/kpi_mbuf.h) over [`crate::emu::kernel::mbuf`].

use std::ffi::{c_char, c_int, c_void};

use common::sys::{EEXIST, EINVAL, ENOENT, ENOMEM};

use super::call::{c_string, put};
use crate::emu::kernel::fault::FaultPoint;
use crate::emu::kernel::mbuf::{LEADING, MBUF_PKTHDR, MCLBYTES, MLEN, Owner, handle_of};
use crate::emu::kernel::packet;
use crate::emu::kernel::{self, Kernel};

/// Runs `f` on a live mbuf, or returns `default` (the violation is recorded).
fn on<R>(h: u64, op: &str, default: R, f: impl FnOnce(&mut Kernel, u64) -> R) -> R {
    kernel::with(|k| match k.mbuf_live(h, op) {
        Some(id) => f(k, id),
        None => default,
    })
}

fn kext_owner(k: &Kernel, via: &str) -> Owner {
    Owner::Kext {
        since: format!("{via} in {}", k.during()),
    }
}

fn fail_alloc(k: &mut Kernel, via: &str) -> bool {
    let f = k.faults.should_fail(FaultPoint::MbufAlloc);
    if f {
        k.record(format!("{via} failed (fault plan)"), i64::from(ENOMEM));
    }
    f
}

extern "C" fn mbuf_data(m: u64) -> *mut c_void {
    on(m, "mbuf_data", std::ptr::null_mut(), |k, id| {
        let mb = k.mbuf_mut(id);
        // In bounds: off <= buf.len() is kept by every KPI that moves it.
        mb.buf[mb.off..].as_mut_ptr().cast()
    })
}
extern "C" fn mbuf_datastart(m: u64) -> *mut c_void {
    on(m, "mbuf_datastart", std::ptr::null_mut(), |k, id| {
        k.mbuf_mut(id).buf.as_mut_ptr().cast()
    })
}
extern "C" fn mbuf_len(m: u64) -> usize {
    on(m, "mbuf_len", 0, |k, id| k.mbuf(id).len)
}
extern "C" fn mbuf_maxlen(m: u64) -> usize {
    on(m, "mbuf_maxlen", 0, |k, id| k.mbuf(id).buf.len())
}
extern "C" fn mbuf_leadingspace(m: u64) -> usize {
    on(m, "mbuf_leadingspace", 0, |k, id| k.mbuf(id).off)
}
extern "C" fn mbuf_trailingspace(m: u64) -> usize {
    on(m, "mbuf_trailingspace", 0, |k, id| {
        let mb = k.mbuf(id);
        mb.buf.len() - mb.off - mb.len
    })
}
extern "C" fn mbuf_setlen(m: u64, len: usize) {
    on(m, "mbuf_setlen", (), |k, id| {
        let (off, cap) = (k.mbuf(id).off, k.mbuf(id).buf.len());
        if off + len > cap {
            k.violation(
                "mbuf-overflow",
                format!(
                    "mbuf_setlen(mbuf #{id}, {len}): only {} bytes fit after the data pointer",
                    cap - off
                ),
            );
        } else {
            k.mbuf_mut(id).len = len;
        }
    })
}
unsafe extern "C" fn mbuf_setdata(m: u64, data: *mut c_void, len: usize) -> c_int {
    on(m, "mbuf_setdata", EINVAL, |k, id| {
        let mb = k.mbuf_mut(id);
        let start = mb.buf.as_ptr() as usize;
        let d = data as usize;
        if d < start || d + len > start + mb.buf.len() {
            return EINVAL;
        }
        mb.off = d - start;
        mb.len = len;
        0
    })
}
extern "C" fn mbuf_next(m: u64) -> u64 {
    on(m, "mbuf_next", 0, |k, id| {
        k.mbuf(id).next.map(handle_of).unwrap_or(0)
    })
}
extern "C" fn mbuf_setnext(m: u64, next: u64) -> c_int {
    on(m, "mbuf_setnext", EINVAL, |k, id| {
        let n = if next == 0 {
            None
        } else {
            match k.mbuf_live(next, "mbuf_setnext") {
                Some(n) => Some(n),
                None => return EINVAL,
            }
        };
        k.mbuf_mut(id).next = n;
        0
    })
}
extern "C" fn mbuf_nextpkt(m: u64) -> u64 {
    on(m, "mbuf_nextpkt", 0, |k, id| {
        k.mbuf(id).nextpkt.map(handle_of).unwrap_or(0)
    })
}
extern "C" fn mbuf_setnextpkt(m: u64, next: u64) {
    on(m, "mbuf_setnextpkt", (), |k, id| {
        let n = if next == 0 {
            None
        } else {
            k.mbuf_live(next, "mbuf_setnextpkt")
        };
        k.mbuf_mut(id).nextpkt = n;
    })
}
extern "C" fn mbuf_flags(m: u64) -> u32 {
    on(m, "mbuf_flags", 0, |k, id| k.mbuf(id).flags)
}
extern "C" fn mbuf_type(m: u64) -> c_int {
    on(m, "mbuf_type", 0, |k, id| k.mbuf(id).mtype)
}

extern "C" fn mbuf_pkthdr_len(m: u64) -> usize {
    hdr_or(m, "mbuf_pkthdr_len", 0, |h| h.len)
}
extern "C" fn mbuf_pkthdr_setlen(m: u64, len: usize) {
    hdr_or(m, "mbuf_pkthdr_setlen", (), |h| h.len = len)
}
extern "C" fn mbuf_pkthdr_adjustlen(m: u64, amount: c_int) {
    hdr_or(m, "mbuf_pkthdr_adjustlen", (), |h| {
        h.len = (h.len as i64 + i64::from(amount)).max(0) as usize
    })
}
extern "C" fn mbuf_pkthdr_rcvif(m: u64) -> u64 {
    hdr_or(m, "mbuf_pkthdr_rcvif", 0, |h| h.rcvif)
}

fn hdr_or<R>(
    m: u64,
    op: &str,
    default: R,
    f: impl FnOnce(&mut crate::emu::kernel::mbuf::PktHdr) -> R,
) -> R {
    kernel::with(|k| {
        let Some(id) = k.mbuf_live(m, op) else {
            return default;
        };
        if k.mbuf(id).pkthdr.is_none() {
            k.violation(
                "mbuf-no-pkthdr",
                format!("{op}: mbuf #{id} has no packet header (MBUF_PKTHDR)"),
            );
            return default;
        }
        match k.mbuf_mut(id).pkthdr.as_mut() {
            Some(h) => f(h),
            None => default,
        }
    })
}

/// # Safety
/// `out` must be NULL or valid for a write of a `u64` (the allocating KPIs'
/// `mbuf_t *` out-parameter).
unsafe fn alloc_one(how_hdr: bool, cap: usize, off: usize, via: &str, out: *mut u64) -> c_int {
    let r = kernel::with(|k| {
        if fail_alloc(k, via) {
            return None;
        }
        let owner = kext_owner(k, via);
        Some(k.mbuf_new(cap, off, how_hdr, owner))
    });
    match r {
        Some(id) => {
            // SAFETY: the KPI's out-parameter (mbuf_t *).
            unsafe { put(out, handle_of(id)) };
            0
        }
        None => {
            // SAFETY: as above; the kernel stores NULL on failure.
            unsafe { put(out, 0) };
            ENOMEM
        }
    }
}

unsafe extern "C" fn mbuf_get(_how: c_int, _ty: c_int, out: *mut u64) -> c_int {
    // SAFETY: `out` is the KPI's `mbuf_t *` out-parameter, passed on.
    unsafe { alloc_one(false, MLEN, 0, "mbuf_get", out) }
}
unsafe extern "C" fn mbuf_gethdr(_how: c_int, _ty: c_int, out: *mut u64) -> c_int {
    // SAFETY: `out` is the KPI's `mbuf_t *` out-parameter, passed on.
    unsafe { alloc_one(true, MLEN, 0, "mbuf_gethdr", out) }
}
unsafe extern "C" fn mbuf_getpacket(_how: c_int, out: *mut u64) -> c_int {
    // SAFETY: `out` is the KPI's `mbuf_t *` out-parameter, passed on.
    unsafe { alloc_one(true, MCLBYTES, 0, "mbuf_getpacket", out) }
}
unsafe extern "C" fn mbuf_allocpacket(
    _how: c_int,
    len: usize,
    maxchunks: *mut u32,
    out: *mut u64,
) -> c_int {
    // One chunk of the whole size (a cluster when small): allowed by the KPI.
    // SAFETY: `out` is the KPI's `mbuf_t *` out-parameter, passed on.
    let r = unsafe { alloc_one(true, len.max(MCLBYTES), 0, "mbuf_allocpacket", out) };
    if r == 0 {
        // SAFETY: optional in/out parameter.
        unsafe { put(maxchunks, 1) };
        // SAFETY: `out` was just written with a valid handle by alloc_one.
        let h = unsafe { out.read_unaligned() };
        kernel::with(|k| {
            if let Some(id) = k.mbuf_live(h, "mbuf_allocpacket") {
                let m = k.mbuf_mut(id);
                m.len = len;
                if let Some(p) = m.pkthdr.as_mut() {
                    p.len = len;
                }
            }
        });
    }
    r
}

extern "C" fn mbuf_free(m: u64) -> u64 {
    kernel::with(|k| {
        if m == 0 {
            return 0;
        }
        let Some(id) = mbuf_free_check(k, m, "mbuf_free") else {
            return 0;
        };
        let next = k.mbuf(id).next;
        let during = k.during();
        k.mbuf_mut(id).owner = Owner::Freed {
            during,
            by: "mbuf_free".into(),
        };
        k.mbuf_retire(id);
        next.map(handle_of).unwrap_or(0)
    })
}

fn mbuf_free_check(k: &mut Kernel, m: u64, op: &str) -> Option<u64> {
    if let Some(id) = crate::emu::kernel::unhandle(m, crate::emu::kernel::Kind::Mbuf) {
        match k.mbufs.all.get(&id).map(|x| x.owner.clone()) {
            Some(Owner::Freed { during, by }) => {
                k.violation(
                    "mbuf-double-free",
                    format!("{op}: mbuf #{id} was already freed by {by} during {during}"),
                );
                return None;
            }
            Some(Owner::Consumed { during, by }) => {
                k.violation(
                    "mbuf-freed-after-inject",
                    format!(
                        "{op}: mbuf #{id} was handed to the stack by {by} during {during}, which frees it: a double free"
                    ),
                );
                return None;
            }
            _ => {}
        }
    }
    k.mbuf_live(m, op)
}

extern "C" fn mbuf_freem(m: u64) {
    kernel::with(|k| {
        if m == 0 {
            return;
        }
        if let Some(id) = mbuf_free_check(k, m, "mbuf_freem") {
            k.mbuf_free_chain(id, "mbuf_freem");
        }
    })
}

extern "C" fn mbuf_freem_list(m: u64) -> c_int {
    let mut n = 0;
    let mut cur = m;
    while cur != 0 {
        let next = kernel::with(|k| {
            let id = mbuf_free_check(k, cur, "mbuf_freem_list")?;
            let nx = k.mbuf(id).nextpkt;
            k.mbuf_free_chain(id, "mbuf_freem_list");
            Some(nx.map(handle_of).unwrap_or(0))
        });
        n += 1;
        cur = next.unwrap_or(0);
    }
    n
}

unsafe extern "C" fn mbuf_pullup(mp: *mut u64, len: usize) -> c_int {
    if mp.is_null() {
        kernel::with(|k| k.violation("mbuf-null", "mbuf_pullup: NULL mbuf_t *"));
        return EINVAL;
    }
    // SAFETY: mbuf_pullup takes an in/out mbuf_t * (checked non-NULL).
    let m = unsafe { mp.read_unaligned() };
    let r = kernel::with(|k| {
        let id = k.mbuf_live(m, "mbuf_pullup")?;
        let bytes = k.mbuf_bytes(id);
        if k.faults.should_fail(FaultPoint::Pullup) || len > bytes.len() || len > MCLBYTES - LEADING
        {
            k.mbuf_free_chain(id, "mbuf_pullup (failed: the kernel frees the chain)");
            return Some(Err(()));
        }
        if k.mbuf(id).len >= len {
            return Some(Ok(id));
        }
        // Gather the first `len` bytes into the first mbuf (which gets a cluster if needed).
        let chain = k.mbuf_chain(id);
        let first = k.mbuf_mut(id);
        if first.buf.len() - first.off < len {
            let mut nb = vec![0u8; MCLBYTES].into_boxed_slice();
            nb[..first.len].copy_from_slice(&first.buf[first.off..first.off + first.len]);
            first.buf = nb;
            first.off = 0;
        }
        let mut need = len - k.mbuf(id).len;
        for &other in &chain[1..] {
            if need == 0 {
                break;
            }
            let take = need.min(k.mbuf(other).len);
            let data: Vec<u8> = {
                let o = k.mbuf(other);
                o.buf[o.off..o.off + take].to_vec()
            };
            {
                let o = k.mbuf_mut(other);
                o.off += take;
                o.len -= take;
            }
            let f = k.mbuf_mut(id);
            let at = f.off + f.len;
            f.buf[at..at + take].copy_from_slice(&data);
            f.len += take;
            need -= take;
        }
        Some(Ok(id))
    });
    match r {
        Some(Ok(id)) => {
            // SAFETY: as above.
            unsafe { mp.write_unaligned(handle_of(id)) };
            0
        }
        Some(Err(())) => {
            // SAFETY: as above; the kernel sets *mbuf to NULL when it freed the chain.
            unsafe { mp.write_unaligned(0) };
            ENOMEM
        }
        None => EINVAL,
    }
}

unsafe extern "C" fn mbuf_copydata(m: u64, off: usize, len: usize, out: *mut c_void) -> c_int {
    let bytes = on(m, "mbuf_copydata", None, |k, id| Some(k.mbuf_bytes(id)));
    let Some(bytes) = bytes else { return EINVAL };
    if off.checked_add(len).is_none_or(|end| end > bytes.len()) {
        return EINVAL;
    }
    if len > 0 {
        // SAFETY: mbuf_copydata's contract: `out` holds `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes[off..].as_ptr(), out.cast::<u8>(), len) };
    }
    0
}

unsafe extern "C" fn mbuf_copyback(
    m: u64,
    off: usize,
    len: usize,
    data: *const c_void,
    _how: c_int,
) -> c_int {
    if len == 0 {
        return 0;
    }
    // SAFETY: mbuf_copyback's contract: `data` holds `len` bytes.
    let src = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec();
    on(m, "mbuf_copyback", EINVAL, |k, id| {
        let mut pos = 0usize; // chain offset of the current mbuf's data
        let mut written = 0usize;
        let chain = k.mbuf_chain(id);
        let last = *chain.last().unwrap_or(&id);
        for &i in &chain {
            let mb = k.mbuf_mut(i);
            let start = pos;
            pos += mb.len;
            let mut cursor = off + written;
            while written < len && cursor >= start && cursor < start + mb.len {
                mb.buf[mb.off + cursor - start] = src[written];
                written += 1;
                cursor += 1;
            }
            if i == last && written < len && off + written >= pos {
                // Extend the last mbuf within its capacity (the kernel may allocate more).
                let room = mb.buf.len() - mb.off - mb.len;
                let gap = off + written - pos;
                if gap + (len - written) > room {
                    return ENOMEM;
                }
                let at = mb.off + mb.len + gap;
                mb.buf[at..at + len - written].copy_from_slice(&src[written..]);
                let grow = gap + len - written;
                mb.len += grow;
                written = len;
                if let Some(h) = k.mbuf_mut(id).pkthdr.as_mut() {
                    h.len += grow;
                }
            }
        }
        if written == len { 0 } else { EINVAL }
    })
}

unsafe extern "C" fn mbuf_dup(src: u64, _how: c_int, out: *mut u64) -> c_int {
    let r = on(src, "mbuf_dup", None, |k, id| {
        if fail_alloc(k, "mbuf_dup") {
            return None;
        }
        let bytes = k.mbuf_bytes(id);
        let hdr = k.mbuf(id).pkthdr.clone();
        let nid = k.mbuf_packet(&bytes);
        let owner = kext_owner(k, "mbuf_dup");
        let m = k.mbuf_mut(nid);
        m.owner = owner;
        if let Some(h) = hdr {
            m.pkthdr = Some(crate::emu::kernel::mbuf::PktHdr {
                len: bytes.len(),
                ..h
            });
        } else {
            m.pkthdr = None;
            m.flags &= !MBUF_PKTHDR;
        }
        Some(nid)
    });
    match r {
        Some(id) => {
            // SAFETY: out-parameter.
            unsafe { put(out, handle_of(id)) };
            0
        }
        None => ENOMEM,
    }
}

unsafe extern "C" fn mbuf_prepend(mp: *mut u64, len: usize, _how: c_int) -> c_int {
    if mp.is_null() {
        return EINVAL;
    }
    // SAFETY: in/out mbuf_t * (non-NULL).
    let m = unsafe { mp.read_unaligned() };
    let r = kernel::with(|k| {
        let id = k.mbuf_live(m, "mbuf_prepend")?;
        if k.mbuf(id).off >= len {
            let mb = k.mbuf_mut(id);
            mb.off -= len;
            mb.len += len;
            if let Some(h) = mb.pkthdr.as_mut() {
                h.len += len;
            }
            return Some(Ok(id));
        }
        if fail_alloc(k, "mbuf_prepend") {
            k.mbuf_free_chain(id, "mbuf_prepend (failed: the kernel frees the chain)");
            return Some(Err(()));
        }
        let owner = k.mbuf(id).owner.clone();
        let hdr = k.mbuf_mut(id).pkthdr.take();
        k.mbuf_mut(id).flags &= !MBUF_PKTHDR;
        let nid = k.mbuf_new(MLEN.max(len), MLEN.max(len) - len, hdr.is_some(), owner);
        let nm = k.mbuf_mut(nid);
        nm.len = len;
        nm.next = Some(id);
        nm.pkthdr = hdr.map(|mut h| {
            h.len += len;
            h
        });
        Some(Ok(nid))
    });
    match r {
        Some(Ok(id)) => {
            // SAFETY: as above.
            unsafe { mp.write_unaligned(handle_of(id)) };
            0
        }
        Some(Err(())) => {
            // SAFETY: as above.
            unsafe { mp.write_unaligned(0) };
            ENOMEM
        }
        None => EINVAL,
    }
}

extern "C" fn mbuf_adj(m: u64, len: c_int) {
    on(m, "mbuf_adj", (), |k, id| {
        let chain = k.mbuf_chain(id);
        let mut n = len.unsigned_abs() as usize;
        let trimmed = n;
        if len >= 0 {
            for &i in &chain {
                let mb = k.mbuf_mut(i);
                let t = n.min(mb.len);
                mb.off += t;
                mb.len -= t;
                n -= t;
            }
        } else {
            for &i in chain.iter().rev() {
                let mb = k.mbuf_mut(i);
                let t = n.min(mb.len);
                mb.len -= t;
                n -= t;
            }
        }
        if let Some(h) = k.mbuf_mut(id).pkthdr.as_mut() {
            h.len = h.len.saturating_sub(trimmed - n);
        }
    })
}

/// `mbuf_outbound_finalize(m, protocol_family, protocol_offset)`: completes the
/// checksums the stack left to hardware (IPv4 header, delayed TCP/UDP over IPv4
/// or IPv6) and clears the request flags.
extern "C" fn mbuf_outbound_finalize(m: u64, family: u32, offset: usize) {
    on(m, "mbuf_outbound_finalize", (), |k, id| {
        if family != 2 && family != 30 {
            k.violation(
                "mbuf-finalize-family",
                format!("mbuf_outbound_finalize: protocol family {family} is neither AF_INET nor AF_INET6"),
            );
            return;
        }
        let req = k
            .mbuf(id)
            .pkthdr
            .as_ref()
            .map(|h| h.csum_requested)
            .unwrap_or(0);
        let mut bytes = k.mbuf_bytes(id);
        if offset > bytes.len() {
            return;
        }
        let pkt = &mut bytes[offset..];
        if req & (REQ_TCP | REQ_UDP) != 0 {
            packet::finalize_l4_from_seed(pkt);
        }
        if req & REQ_IP != 0 && family == 2 {
            packet::finalize_ip(pkt);
        }
        write_back(k, id, &bytes);
        if let Some(h) = k.mbuf_mut(id).pkthdr.as_mut() {
            h.csum_requested &= !(REQ_IP | REQ_TCP | REQ_UDP);
        }
    })
}

/// Writes `bytes` over the chain's data (same total length).
pub(crate) fn write_back(k: &mut Kernel, id: u64, bytes: &[u8]) {
    let mut at = 0;
    for i in k.mbuf_chain(id) {
        let mb = k.mbuf_mut(i);
        let n = mb.len.min(bytes.len() - at);
        mb.buf[mb.off..mb.off + n].copy_from_slice(&bytes[at..at + n]);
        at += n;
    }
}

pub const REQ_IP: u32 = 0x0001;
pub const REQ_TCP: u32 = 0x0002;
pub const REQ_UDP: u32 = 0x0004;

extern "C" fn mbuf_inbound_modified(m: u64) {
    hdr_or(m, "mbuf_inbound_modified", (), |h| h.csum_performed = 0)
}
unsafe extern "C" fn mbuf_get_csum_requested(m: u64, req: *mut u32, value: *mut u32) -> c_int {
    let (r, v) = hdr_or(m, "mbuf_get_csum_requested", (0, 0), |h| {
        (h.csum_requested, h.csum_data)
    });
    // SAFETY: out-parameters (value may be NULL).
    unsafe {
        put(req, r);
        put(value, v);
    }
    0
}
extern "C" fn mbuf_clear_csum_requested(m: u64) -> c_int {
    hdr_or(m, "mbuf_clear_csum_requested", (), |h| h.csum_requested = 0);
    0
}
unsafe extern "C" fn mbuf_get_csum_performed(m: u64, perf: *mut u32, value: *mut u32) -> c_int {
    let (p, v) = hdr_or(m, "mbuf_get_csum_performed", (0, 0), |h| {
        (h.csum_performed, h.csum_data)
    });
    // SAFETY: out-parameters.
    unsafe {
        put(perf, p);
        put(value, v);
    }
    0
}
extern "C" fn mbuf_set_csum_performed(m: u64, perf: u32, value: u32) -> c_int {
    hdr_or(m, "mbuf_set_csum_performed", (), |h| {
        h.csum_performed = perf;
        h.csum_data = value;
    });
    0
}

unsafe extern "C" fn mbuf_tag_id_find(name: *const c_char, id: *mut u32) -> c_int {
    // SAFETY: a NUL-terminated string (the tag's module name).
    let Some(name) = (unsafe { c_string(name) }) else {
        return EINVAL;
    };
    let n = kernel::with(|k| {
        if let Some(i) = k.mbufs.tag_ids.iter().position(|t| *t == name) {
            i
        } else {
            k.mbufs.tag_ids.push(name);
            k.mbufs.tag_ids.len() - 1
        }
    });
    // SAFETY: out-parameter.
    unsafe { put(id, 1000 + n as u32) };
    0
}

unsafe extern "C" fn mbuf_tag_allocate(
    m: u64,
    id: u32,
    ty: u16,
    len: usize,
    _how: c_int,
    data: *mut *mut c_void,
) -> c_int {
    let r = hdr_or(m, "mbuf_tag_allocate", Err(EINVAL), |h| {
        if h.tags.iter().any(|t| t.0 == id && t.1 == ty) {
            return Err(EEXIST);
        }
        let mut b = vec![0u8; len.max(1)].into_boxed_slice();
        let p = b.as_mut_ptr().cast::<c_void>();
        h.tags.push((id, ty, b));
        Ok(p)
    });
    match r {
        Ok(p) => {
            // SAFETY: out-parameter.
            unsafe { put(data, p) };
            0
        }
        Err(e) => e,
    }
}

unsafe extern "C" fn mbuf_tag_find(
    m: u64,
    id: u32,
    ty: u16,
    len: *mut usize,
    data: *mut *mut c_void,
) -> c_int {
    let r = hdr_or(m, "mbuf_tag_find", None, |h| {
        h.tags
            .iter_mut()
            .find(|t| t.0 == id && t.1 == ty)
            .map(|t| (t.2.len(), t.2.as_mut_ptr().cast::<c_void>()))
    });
    match r {
        Some((l, p)) => {
            // SAFETY: out-parameters.
            unsafe {
                put(len, l);
                put(data, p);
            }
            0
        }
        None => ENOENT,
    }
}

extern "C" fn mbuf_tag_free(m: u64, id: u32, ty: u16) {
    hdr_or(m, "mbuf_tag_free", (), |h| {
        h.tags.retain(|t| !(t.0 == id && t.1 == ty))
    })
}

macro_rules! sym {
    ($name:literal, $f:expr) => {
        ($name, $f as usize as u64)
    };
}

pub fn symbols() -> Vec<(&'static str, u64)> {
    vec![
        sym!("_mbuf_data", mbuf_data as extern "C" fn(u64) -> *mut c_void),
        sym!(
            "_mbuf_datastart",
            mbuf_datastart as extern "C" fn(u64) -> *mut c_void
        ),
        sym!("_mbuf_len", mbuf_len as extern "C" fn(u64) -> usize),
        sym!("_mbuf_maxlen", mbuf_maxlen as extern "C" fn(u64) -> usize),
        sym!(
            "_mbuf_leadingspace",
            mbuf_leadingspace as extern "C" fn(u64) -> usize
        ),
        sym!(
            "_mbuf_trailingspace",
            mbuf_trailingspace as extern "C" fn(u64) -> usize
        ),
        sym!("_mbuf_setlen", mbuf_setlen as extern "C" fn(u64, usize)),
        sym!(
            "_mbuf_setdata",
            mbuf_setdata as unsafe extern "C" fn(u64, *mut c_void, usize) -> c_int
        ),
        sym!("_mbuf_next", mbuf_next as extern "C" fn(u64) -> u64),
        sym!(
            "_mbuf_setnext",
            mbuf_setnext as extern "C" fn(u64, u64) -> c_int
        ),
        sym!("_mbuf_nextpkt", mbuf_nextpkt as extern "C" fn(u64) -> u64),
        sym!(
            "_mbuf_setnextpkt",
            mbuf_setnextpkt as extern "C" fn(u64, u64)
        ),
        sym!("_mbuf_flags", mbuf_flags as extern "C" fn(u64) -> u32),
        sym!("_mbuf_type", mbuf_type as extern "C" fn(u64) -> c_int),
        sym!(
            "_mbuf_pkthdr_len",
            mbuf_pkthdr_len as extern "C" fn(u64) -> usize
        ),
        sym!(
            "_mbuf_pkthdr_setlen",
            mbuf_pkthdr_setlen as extern "C" fn(u64, usize)
        ),
        sym!(
            "_mbuf_pkthdr_adjustlen",
            mbuf_pkthdr_adjustlen as extern "C" fn(u64, c_int)
        ),
        sym!(
            "_mbuf_pkthdr_rcvif",
            mbuf_pkthdr_rcvif as extern "C" fn(u64) -> u64
        ),
        sym!(
            "_mbuf_get",
            mbuf_get as unsafe extern "C" fn(c_int, c_int, *mut u64) -> c_int
        ),
        sym!(
            "_mbuf_gethdr",
            mbuf_gethdr as unsafe extern "C" fn(c_int, c_int, *mut u64) -> c_int
        ),
        sym!(
            "_mbuf_getpacket",
            mbuf_getpacket as unsafe extern "C" fn(c_int, *mut u64) -> c_int
        ),
        sym!(
            "_mbuf_allocpacket",
            mbuf_allocpacket as unsafe extern "C" fn(c_int, usize, *mut u32, *mut u64) -> c_int
        ),
        sym!("_mbuf_free", mbuf_free as extern "C" fn(u64) -> u64),
        sym!("_mbuf_freem", mbuf_freem as extern "C" fn(u64)),
        sym!(
            "_mbuf_freem_list",
            mbuf_freem_list as extern "C" fn(u64) -> c_int
        ),
        sym!(
            "_mbuf_pullup",
            mbuf_pullup as unsafe extern "C" fn(*mut u64, usize) -> c_int
        ),
        sym!(
            "_mbuf_copydata",
            mbuf_copydata as unsafe extern "C" fn(u64, usize, usize, *mut c_void) -> c_int
        ),
        sym!(
            "_mbuf_copyback",
            mbuf_copyback as unsafe extern "C" fn(u64, usize, usize, *const c_void, c_int) -> c_int
        ),
        sym!(
            "_mbuf_dup",
            mbuf_dup as unsafe extern "C" fn(u64, c_int, *mut u64) -> c_int
        ),
        sym!(
            "_mbuf_prepend",
            mbuf_prepend as unsafe extern "C" fn(*mut u64, usize, c_int) -> c_int
        ),
        sym!("_mbuf_adj", mbuf_adj as extern "C" fn(u64, c_int)),
        sym!(
            "_mbuf_outbound_finalize",
            mbuf_outbound_finalize as extern "C" fn(u64, u32, usize)
        ),
        sym!(
            "_mbuf_inbound_modified",
            mbuf_inbound_modified as extern "C" fn(u64)
        ),
        sym!(
            "_mbuf_get_csum_requested",
            mbuf_get_csum_requested as unsafe extern "C" fn(u64, *mut u32, *mut u32) -> c_int
        ),
        sym!(
            "_mbuf_clear_csum_requested",
            mbuf_clear_csum_requested as extern "C" fn(u64) -> c_int
        ),
        sym!(
            "_mbuf_get_csum_performed",
            mbuf_get_csum_performed as unsafe extern "C" fn(u64, *mut u32, *mut u32) -> c_int
        ),
        sym!(
            "_mbuf_set_csum_performed",
            mbuf_set_csum_performed as extern "C" fn(u64, u32, u32) -> c_int
        ),
        sym!(
            "_mbuf_tag_id_find",
            mbuf_tag_id_find as unsafe extern "C" fn(*const c_char, *mut u32) -> c_int
        ),
        sym!(
            "_mbuf_tag_allocate",
            mbuf_tag_allocate
                as unsafe extern "C" fn(u64, u32, u16, usize, c_int, *mut *mut c_void) -> c_int
        ),
        sym!(
            "_mbuf_tag_find",
            mbuf_tag_find
                as unsafe extern "C" fn(u64, u32, u16, *mut usize, *mut *mut c_void) -> c_int
        ),
        sym!(
            "_mbuf_tag_free",
            mbuf_tag_free as extern "C" fn(u64, u32, u16)
        ),
    ]
}

/// Descriptions of mbufs the kext still owns (leaks), for the end-of-run ledger.
pub fn leaked(k: &Kernel) -> Vec<String> {
    k.mbufs
        .all
        .values()
        .filter_map(|m| match &m.owner {
            Owner::Kext { since } => Some(format!(
                "mbuf #{} ({} bytes) never freed; the kext owns it since {since}",
                m.id, m.len
            )),
            _ => None,
        })
        .collect()
}
