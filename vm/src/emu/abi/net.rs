//! Socket filter, IP filter and kern_control KPIs (com.apple.kpi.bsd), and the
//! calls from the emulated stack into the kext's filter callbacks.

use std::ffi::{c_int, c_void};

use common::sys::{EEXIST, EINVAL, EJUSTRETURN, ENOBUFS, ENOENT, ENOMEM, ENOTCONN};

use super::call::{c_string, invoke, put};
use crate::emu::kernel::fault::FaultPoint;
use crate::emu::kernel::ipf::{Injected, IpfFilter, IpfReg, IpfState};
use crate::emu::kernel::mbuf::{Owner, Tags, handle_of};
use crate::emu::kernel::sflt::{RegState, Registration, SfltFilter};
use crate::emu::kernel::{self, Deferred, Kernel, Kind};

fn check_code(k: &mut Kernel, what: &str, callbacks: &[(&str, u64)]) -> bool {
    let mut ok = true;
    for &(name, a) in callbacks {
        if a != 0 && !k.is_kext_code(crate::emu::arch::strip(a)) {
            k.violation(
                "callback-outside-kext",
                format!("{what}: {name} = {a:#x} is not in the kext's code"),
            );
            ok = false;
        }
    }
    ok
}

// ---- socket filters ----

unsafe extern "C" fn sflt_register(
    filter: *const [u8; SfltFilter::SIZE],
    domain: c_int,
    ty: c_int,
    protocol: c_int,
) -> c_int {
    if filter.is_null() {
        kernel::with(|k| k.violation("sflt-null-filter", "sflt_register(NULL, …)"));
        return EINVAL;
    }
    // SAFETY: sflt_register reads a `struct sflt_filter` (192 bytes on LP64); the
    // kernel copies it, as we do here.
    let raw = unsafe { filter.read_unaligned() };
    let f = SfltFilter::parse(&raw);
    // SAFETY: sf_name is a NUL-terminated string when not NULL.
    let name = unsafe { c_string(f.name as *const _) };
    kernel::with(|k| {
        let mut missing = Vec::new();
        if f.attach == 0 {
            missing.push("sf_attach is NULL");
        }
        if f.detach == 0 {
            missing.push("sf_detach is NULL");
        }
        if f.handle == 0 {
            missing.push("sf_handle is 0");
        }
        if name.is_none() {
            missing.push("sf_name is NULL");
        }
        if !missing.is_empty() {
            k.violation(
                "sflt-required-field",
                format!(
                    "sflt_register: {} (the kernel requires them and returns EINVAL)",
                    missing.join(", ")
                ),
            );
            return EINVAL;
        }
        if f.ext_reserved_nonzero {
            k.violation(
                "sflt-reserved",
                "sflt_register: sf_ext.sf_ext_rsvd must be zeroed",
            );
        }
        if !check_code(k, "sflt_register", &f.callbacks()) {
            return EINVAL;
        }
        if k.sflt
            .regs
            .get(&f.handle)
            .is_some_and(|r| r.state != RegState::Unregistered)
        {
            return EEXIST;
        }
        if k.faults.should_fail(FaultPoint::SfltRegister) {
            k.record(
                format!("sflt_register handle {:#x} (fault: ENOMEM)", f.handle),
                ENOMEM.into(),
            );
            return ENOMEM;
        }
        k.sflt.regs.insert(
            f.handle,
            Registration {
                filter: f,
                name: name.unwrap_or_default(),
                domain,
                ty,
                protocol,
                state: RegState::Registered,
            },
        );
        k.record(format!("sflt_register handle {:#x}", f.handle), 0);
        0
    })
}

/// Emulated time until late kernel work (another CPU, the cleanup thread) is done.
const LATE_NS: u64 = 1_000_000;

/// As xnu (bsd/kern/kpi_socketfilter.c): the filter leaves the global list at
/// once; `sf_unregistered` runs inside the call when nothing holds the filter
/// (`sflt_release_locked`), or later, from the cleanup thread, once the
/// sockets still attached have been detached (modelled as 1 ms of emulated
/// time: delivered when the clock passes it, or between entry points).
extern "C" fn sflt_unregister(handle: u32) -> c_int {
    let now = kernel::with(|k| match k.sflt.regs.get_mut(&handle) {
        Some(r) if r.state == RegState::Registered => {
            r.state = RegState::Unregistering;
            let held = k
                .sflt
                .sockets
                .values()
                .any(|s| s.attached.iter().any(|&(h, _)| h == handle));
            if held || k.faults.should_fail(FaultPoint::SfltUnregisterLate) {
                let at = k.clock_ns + LATE_NS;
                k.timed.push((at, Deferred::SfUnregistered { handle }));
                Some(false)
            } else {
                Some(true)
            }
        }
        _ => {
            k.violation(
                "sflt-unregister-unknown",
                format!("sflt_unregister({handle:#x}): no such registered filter"),
            );
            None
        }
    });
    match now {
        Some(true) => {
            deliver(Deferred::SfUnregistered { handle });
            0
        }
        Some(false) => 0,
        None => ENOENT,
    }
}

/// `struct sockaddr_in`/`sockaddr_in6` bytes for a host address.
pub fn sockaddr(a: std::net::SocketAddr) -> Vec<u8> {
    match a {
        std::net::SocketAddr::V4(v) => {
            let mut b = vec![0u8; 16];
            b[0] = 16;
            b[1] = 2;
            b[2..4].copy_from_slice(&v.port().to_be_bytes());
            b[4..8].copy_from_slice(&v.ip().octets());
            b
        }
        std::net::SocketAddr::V6(v) => {
            let mut b = vec![0u8; 28];
            b[0] = 28;
            b[1] = 30;
            b[2..4].copy_from_slice(&v.port().to_be_bytes());
            b[8..24].copy_from_slice(&v.ip().octets());
            b
        }
    }
}

/// Parses a `struct sockaddr` the kext left (AF_INET/AF_INET6).
pub fn parse_sockaddr(b: &[u8]) -> Option<std::net::SocketAddr> {
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match b.get(1)? {
        2 => Some(std::net::SocketAddr::from((
            <[u8; 4]>::try_from(b.get(4..8)?).ok()?,
            port,
        ))),
        30 => Some(std::net::SocketAddr::from((
            <[u8; 16]>::try_from(b.get(8..24)?).ok()?,
            port,
        ))),
        _ => None,
    }
}

fn socket<R>(
    so: u64,
    op: &str,
    default: R,
    f: impl FnOnce(&mut crate::emu::kernel::sflt::Socket) -> R,
) -> R {
    kernel::with(|k| {
        match kernel::unhandle(so, Kind::Socket).and_then(|id| k.sflt.sockets.get_mut(&id)) {
            Some(s) => f(s),
            None => {
                k.violation(
                    "socket-bad-handle",
                    format!("{op}({so:#x}): not a live socket_t"),
                );
                default
            }
        }
    })
}

/// # Safety
/// `out` must be valid for writes of `len` bytes (sock_getpeername/getsockname).
unsafe fn copy_sockaddr(a: Option<std::net::SocketAddr>, out: *mut u8, len: c_int) -> c_int {
    let Some(a) = a else {
        return ENOTCONN;
    };
    let b = sockaddr(a);
    let n = b.len().min(len.max(0) as usize);
    // SAFETY: sock_getpeername/getsockname: `out` holds `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out, n) };
    0
}

unsafe extern "C" fn sock_getpeername(so: u64, out: *mut u8, len: c_int) -> c_int {
    let a = socket(so, "sock_getpeername", None, |s| s.peer);
    // SAFETY: the KPI's `out` holds `len` bytes, passed on.
    unsafe { copy_sockaddr(a, out, len) }
}
unsafe extern "C" fn sock_getsockname(so: u64, out: *mut u8, len: c_int) -> c_int {
    let a = socket(so, "sock_getsockname", None, |s| s.local);
    // SAFETY: the KPI's `out` holds `len` bytes, passed on.
    unsafe { copy_sockaddr(a, out, len) }
}
unsafe extern "C" fn sock_gettype(
    so: u64,
    domain: *mut c_int,
    ty: *mut c_int,
    protocol: *mut c_int,
) -> c_int {
    let t = socket(so, "sock_gettype", None, |s| {
        Some((s.domain, s.ty, s.protocol))
    });
    let Some((d, t, p)) = t else { return EINVAL };
    // SAFETY: optional out-parameters.
    unsafe {
        put(domain, d);
        put(ty, t);
        put(protocol, p);
    }
    0
}

fn inject_sock(so: u64, data: u64, control: u64, out: bool) -> c_int {
    let op = if out {
        "sock_inject_data_out"
    } else {
        "sock_inject_data_in"
    };
    let mut reenter: Option<(Vec<u8>, crate::emu::kernel::mbuf::Tags)> = None;
    let r = kernel::with(|k| {
        let Some(id) = k.mbuf_live(data, op) else {
            return EINVAL;
        };
        let bytes = k.mbuf_bytes(id);
        let tags = k
            .mbuf(id)
            .pkthdr
            .as_ref()
            .map(|h| h.tags.clone())
            .unwrap_or_default();
        let during = k.during();
        k.mbuf_set_owner(
            id,
            Owner::Consumed {
                during: during.clone(),
                by: op.into(),
            },
        );
        if control != 0
            && let Some(c) = k.mbuf_live(control, op)
        {
            k.mbuf_set_owner(
                c,
                Owner::Consumed {
                    during,
                    by: op.into(),
                },
            );
        }
        if k.faults.should_fail(FaultPoint::Inject) {
            return ENOBUFS; // the mbuf is consumed anyway
        }
        match kernel::unhandle(so, Kind::Socket).and_then(|sid| k.sflt.sockets.get_mut(&sid)) {
            Some(s) => {
                if out {
                    // xnu's sosend runs every filter's data_out on injected data,
                    // synchronously: done below, outside this borrow.
                    reenter = Some((bytes, tags));
                } else {
                    s.injected_in.push(bytes);
                }
                0
            }
            None => {
                k.violation(
                    "socket-bad-handle",
                    format!("{op}({so:#x}): not a live socket_t"),
                );
                EINVAL
            }
        }
    });
    if let Some((bytes, tags)) = reenter {
        return reenter_data_out(so, bytes, tags);
    }
    r
}

unsafe extern "C" fn sock_inject_data_out(
    so: u64,
    _to: *const u8,
    data: u64,
    control: u64,
    _flags: u32,
) -> c_int {
    inject_sock(so, data, control, true)
}
unsafe extern "C" fn sock_inject_data_in(
    so: u64,
    _from: *const u8,
    data: u64,
    control: u64,
    _flags: u32,
) -> c_int {
    inject_sock(so, data, control, false)
}

// ---- IP filters ----

/// # Safety
/// `filter` must be NULL or point to a readable `struct ipf_filter`, `out`
/// NULL or valid for a write of an `ipfilter_t` (ipf_addv4/ipf_addv6).
unsafe fn ipf_add(filter: *const [u8; IpfFilter::SIZE], out: *mut u64, v6: bool) -> c_int {
    let op = if v6 { "ipf_addv6" } else { "ipf_addv4" };
    if filter.is_null() || out.is_null() {
        kernel::with(|k| {
            k.violation(
                "ipf-null-argument",
                format!("{op}: NULL filter or filter_ref"),
            )
        });
        return EINVAL;
    }
    // SAFETY: ipf_addv4/v6 read a `struct ipf_filter` (40 bytes); the kernel copies it.
    let raw = unsafe { filter.read_unaligned() };
    let f = IpfFilter::parse(&raw);
    // SAFETY: `name` is a NUL-terminated string when not NULL.
    let name = unsafe { c_string(f.name as *const _) };
    let r = kernel::with(|k| {
        if k.faults.should_fail(FaultPoint::IpfAdd) {
            k.record(format!("{op} (fault: ENOMEM)"), ENOMEM.into());
            return Err(ENOMEM);
        }
        if name.is_none() || (f.input == 0 && f.output == 0) {
            k.violation(
                "ipf-required-field",
                format!(
                    "{op}: {} (the kernel returns EINVAL)",
                    if name.is_none() {
                        "name is NULL"
                    } else {
                        "ipf_input and ipf_output are both NULL"
                    }
                ),
            );
            return Err(EINVAL);
        }
        if !check_code(
            k,
            op,
            &[
                ("ipf_input", f.input),
                ("ipf_output", f.output),
                ("ipf_detach", f.detach),
            ],
        ) {
            return Err(EINVAL);
        }
        let id = k.new_id();
        k.ipf.regs.insert(
            0,
            IpfReg {
                id,
                v6,
                filter: f,
                name: name.unwrap_or_default(),
                state: IpfState::Attached,
            },
        );
        Ok(kernel::handle(Kind::IpFilter, id))
    });
    match r {
        Ok(h) => {
            // SAFETY: out-parameter (checked non-NULL).
            unsafe { put(out, h) };
            0
        }
        Err(e) => e,
    }
}

unsafe extern "C" fn ipf_addv4(filter: *const [u8; IpfFilter::SIZE], out: *mut u64) -> c_int {
    // SAFETY: the KPI's own arguments, passed on.
    unsafe { ipf_add(filter, out, false) }
}
unsafe extern "C" fn ipf_addv6(filter: *const [u8; IpfFilter::SIZE], out: *mut u64) -> c_int {
    // SAFETY: the KPI's own arguments, passed on.
    unsafe { ipf_add(filter, out, true) }
}

/// As xnu (bsd/netinet/kpi_ipfilter.c): `ipf_detach` runs inside the call
/// when no packet is in the filters (`kipf_ref` == 0: always so here between
/// packets), or later, from `ipf_unref` on the CPU that held the last
/// reference (fault point `ipf-detach-late`: 1 ms of emulated time).
extern "C" fn ipf_remove(r: u64) -> c_int {
    let now = kernel::with(|k| {
        let id = kernel::unhandle(r, Kind::IpFilter);
        let late = k.faults.should_fail(FaultPoint::IpfDetachLate);
        let at = k.clock_ns + LATE_NS;
        match id.and_then(|id| k.ipf.regs.iter_mut().find(|x| x.id == id)) {
            Some(reg) if reg.state == IpfState::Attached => {
                reg.state = IpfState::Removing;
                let id = reg.id;
                if late {
                    k.timed.push((at, Deferred::IpfDetach { id }));
                    Ok(None)
                } else {
                    Ok(Some(id))
                }
            }
            _ => {
                k.violation(
                    "ipf-remove-unknown",
                    format!("ipf_remove({r:#x}): not an attached IP filter"),
                );
                Err(ENOENT)
            }
        }
    });
    match now {
        Ok(Some(id)) => {
            deliver(Deferred::IpfDetach { id });
            0
        }
        Ok(None) => 0,
        Err(e) => e,
    }
}

fn ipf_inject(m: u64, r: u64, output: bool) -> c_int {
    let op = if output {
        "ipf_inject_output"
    } else {
        "ipf_inject_input"
    };
    kernel::with(|k| {
        let Some(id) = k.mbuf_live(m, op) else {
            return EINVAL;
        };
        let bytes = k.mbuf_bytes(id);
        let csum = k
            .mbuf(id)
            .pkthdr
            .as_ref()
            .map(|h| h.csum_requested)
            .unwrap_or(0);
        let during = k.during();
        k.mbuf_set_owner(
            id,
            Owner::Consumed {
                during,
                by: op.into(),
            },
        );
        if k.faults.should_fail(FaultPoint::Inject) {
            return ENOBUFS; // and the mbuf is freed anyway
        }
        let after = if r == 0 {
            None
        } else {
            match kernel::unhandle(r, Kind::IpFilter)
                .filter(|id| k.ipf.regs.iter().any(|x| x.id == *id))
            {
                Some(id) => Some(id),
                None => {
                    k.violation(
                        "ipf-bad-ref",
                        format!("{op}: filter_ref {r:#x} is not an IP filter"),
                    );
                    return EINVAL;
                }
            }
        };
        k.ipf.injected.push_back(Injected {
            bytes,
            csum_requested: csum,
            after,
            output,
            thread: std::thread::current().id(),
        });
        0
    })
}

unsafe extern "C" fn ipf_inject_output(m: u64, r: u64, _opts: *mut c_void) -> c_int {
    ipf_inject(m, r, true)
}
extern "C" fn ipf_inject_input(m: u64, r: u64) -> c_int {
    ipf_inject(m, r, false)
}

// ---- calls into the kext ----

/// Delivers all pending deferred kernel work; returns how many items ran.
pub fn deliver_all() -> usize {
    let mut n = 0;
    loop {
        let next = kernel::with(|k| {
            k.deferred.pop_front().or_else(|| {
                // Then late work, in time order (the clock jumps to it).
                let i = (0..k.timed.len()).min_by_key(|&i| k.timed[i].0)?;
                let (at, d) = k.timed.remove(i);
                k.clock_ns = k.clock_ns.max(at);
                Some(d)
            })
        });
        let Some(d) = next else { break };
        deliver(d);
        n += 1;
    }
    n
}

/// Delivers one piece of deferred kernel work (a notification into the kext).
pub fn deliver(d: Deferred) {
    match d {
        Deferred::SfUnregistered { handle } => {
            let (cb, detaches) = kernel::with(|k| {
                let cb = k
                    .sflt
                    .regs
                    .get(&handle)
                    .map(|r| (r.filter.unregistered, r.filter.detach))
                    .unwrap_or((0, 0));
                // Sockets still attached to this filter are detached first.
                let mut v = Vec::new();
                for (sid, s) in k.sflt.sockets.iter_mut() {
                    s.attached.retain(|&(h, cookie)| {
                        if h == handle {
                            v.push((*sid, cookie));
                            false
                        } else {
                            true
                        }
                    });
                }
                (cb, v)
            });
            for (sid, cookie) in detaches {
                call_sf_detach(cb.1, cookie, kernel::handle(Kind::Socket, sid));
            }
            if cb.0 != 0 {
                invoke(cb.0, "sf_unregistered", || {
                    // SAFETY: sf_unregistered: `void (*)(sflt_handle)`; address checked by `invoke`.
                    let f: extern "C" fn(u32) = unsafe {
                        std::mem::transmute(crate::emu::arch::auth_fn(
                            cb.0,
                            crate::emu::arch::disc::SF_UNREGISTERED,
                        ) as usize)
                    };
                    f(handle)
                });
            }
            kernel::with(|k| {
                if let Some(r) = k.sflt.regs.get_mut(&handle) {
                    r.state = RegState::Unregistered;
                }
            });
        }
        Deferred::IpfDetach { id } => {
            let f = kernel::with(|k| k.ipf.regs.iter().find(|r| r.id == id).map(|r| r.filter));
            if let Some(f) = f
                && f.detach != 0
            {
                invoke(f.detach, "ipf_detach", || {
                    // SAFETY: ipf_detach: `void (*)(void *cookie)`; address checked by `invoke`.
                    let d: extern "C" fn(u64) = unsafe {
                        std::mem::transmute(crate::emu::arch::auth_fn(
                            f.detach,
                            crate::emu::arch::disc::IPF_DETACH,
                        ) as usize)
                    };
                    d(f.cookie)
                });
            }
            kernel::with(|k| {
                if let Some(r) = k.ipf.regs.iter_mut().find(|r| r.id == id) {
                    r.state = IpfState::Detached;
                }
            });
        }
    }
}

pub fn call_sf_attach(f: u64, so: u64) -> Option<(c_int, u64)> {
    let mut cookie: u64 = 0;
    let r = invoke(f, "sf_attach", || {
        // SAFETY: sf_attach: `errno_t (*)(void **cookie, socket_t so)`; `cookie` lives on this frame.
        let cb: extern "C" fn(*mut u64, u64) -> c_int = unsafe {
            std::mem::transmute(
                crate::emu::arch::auth_fn(f, crate::emu::arch::disc::SF_ATTACH) as usize,
            )
        };
        cb(&mut cookie, so)
    })?;
    Some((r, cookie))
}

pub fn call_sf_detach(f: u64, cookie: u64, so: u64) {
    invoke(f, "sf_detach", || {
        // SAFETY: sf_detach: `void (*)(void *cookie, socket_t so)`.
        let cb: extern "C" fn(u64, u64) = unsafe {
            std::mem::transmute(
                crate::emu::arch::auth_fn(f, crate::emu::arch::disc::SF_DETACH) as usize,
            )
        };
        cb(cookie, so)
    });
}

/// `sf_connect_out(cookie, so, to)`; `to` may be rewritten by the filter.
pub fn call_sf_connect_out(f: u64, cookie: u64, so: u64, to: &mut [u8]) -> Option<c_int> {
    watched(cookie, "sf_connect_out", || {
        call_sf_connect_out_(f, cookie, so, to)
    })
}

/// Runs a cookie-receiving callback under the cookie-race check
/// ([`crate::emu::kernel::sflt::CookieWatch`]).
fn watched<R>(cookie: u64, what: &str, f: impl FnOnce() -> R) -> R {
    let run = kernel::with(|k| k.sflt.watch.enter(cookie, what));
    let r = f();
    kernel::with(|k| {
        for race in k.sflt.watch.leave(run) {
            k.violation("cookie-race", race);
        }
    });
    r
}

fn call_sf_connect_out_(f: u64, cookie: u64, so: u64, to: &mut [u8]) -> Option<c_int> {
    invoke(f, "sf_connect_out", || {
        // SAFETY: sf_connect_out: `errno_t (*)(void *, socket_t, const struct sockaddr *)`;
        // the kernel passes a writable copy it reads back (xnu-3789+), as `to` is here.
        let cb: extern "C" fn(u64, u64, *mut u8) -> c_int = unsafe {
            std::mem::transmute(
                crate::emu::arch::auth_fn(f, crate::emu::arch::disc::SF_CONNECT_OUT) as usize,
            )
        };
        cb(cookie, so, to.as_mut_ptr())
    })
}

/// `sf_data_out`/`sf_data_in(cookie, so, addr, &data, &control, flags)`; returns
/// the result and the (possibly replaced) data mbuf.
pub fn call_sf_data(f: u64, what: &str, cookie: u64, so: u64, data: u64) -> Option<(c_int, u64)> {
    watched(cookie, what, || call_sf_data_(f, what, cookie, so, data))
}

fn call_sf_data_(f: u64, what: &str, cookie: u64, so: u64, data: u64) -> Option<(c_int, u64)> {
    let mut m = data;
    let mut control: u64 = 0;
    let r = invoke(f, what, || {
        // SAFETY: sf_data_in/out: `errno_t (*)(void *, socket_t, const struct sockaddr *,
        // mbuf_t *, mbuf_t *, sflt_data_flag_t)`; the mbuf_t slots live on this frame.
        let cb: extern "C" fn(u64, u64, *const u8, *mut u64, *mut u64, u32) -> c_int = unsafe {
            std::mem::transmute(
                crate::emu::arch::auth_fn(f, crate::emu::arch::disc::SF_DATA) as usize,
            )
        };
        cb(cookie, so, std::ptr::null(), &mut m, &mut control, 0)
    })?;
    Some((r, m))
}

/// `ipf_output(cookie, &data, options)` or `ipf_input(cookie, &data, offset, protocol)`.
pub fn call_ipf(
    f: &IpfReg,
    output: bool,
    data: u64,
    offset: c_int,
    protocol: u8,
) -> Option<(c_int, u64)> {
    let mut m = data;
    let addr = if output {
        f.filter.output
    } else {
        f.filter.input
    };
    let what = format!(
        "{} of '{}'",
        if output { "ipf_output" } else { "ipf_input" },
        f.name
    );
    let cookie = f.filter.cookie;
    let r = invoke(addr, &what, || {
        if output {
            // SAFETY: ipf_output: `errno_t (*)(void *cookie, mbuf_t *data, ipf_pktopts_t)`.
            let cb: extern "C" fn(u64, *mut u64, *mut c_void) -> c_int = unsafe {
                std::mem::transmute(crate::emu::arch::auth_fn(
                    addr,
                    crate::emu::arch::disc::IPF_OUTPUT,
                ) as usize)
            };
            cb(cookie, &mut m, std::ptr::null_mut())
        } else {
            // SAFETY: ipf_input: `errno_t (*)(void *cookie, mbuf_t *data, int offset, u_int8_t protocol)`.
            let cb: extern "C" fn(u64, *mut u64, c_int, u8) -> c_int = unsafe {
                std::mem::transmute(crate::emu::arch::auth_fn(
                    addr,
                    crate::emu::arch::disc::IPF_INPUT,
                ) as usize)
            };
            cb(cookie, &mut m, offset, protocol)
        }
    })?;
    Some((r, m))
}

pub fn new_socket(domain: i32, ty: i32, protocol: i32) -> u64 {
    kernel::with(|k| {
        let id = k.new_id();
        k.sflt.sockets.insert(
            id,
            crate::emu::kernel::sflt::Socket {
                domain,
                ty,
                protocol,
                ..Default::default()
            },
        );
        kernel::handle(Kind::Socket, id)
    })
}

pub fn mbuf_handle(id: u64) -> u64 {
    handle_of(id)
}

macro_rules! sym {
    ($name:literal, $f:expr) => {
        ($name, $f as usize as u64)
    };
}

pub fn symbols() -> Vec<(&'static str, u64)> {
    vec![
        sym!(
            "_sflt_register",
            sflt_register
                as unsafe extern "C" fn(
                    *const [u8; SfltFilter::SIZE],
                    c_int,
                    c_int,
                    c_int,
                ) -> c_int
        ),
        sym!(
            "_sflt_unregister",
            sflt_unregister as extern "C" fn(u32) -> c_int
        ),
        sym!(
            "_sock_getpeername",
            sock_getpeername as unsafe extern "C" fn(u64, *mut u8, c_int) -> c_int
        ),
        sym!(
            "_sock_getsockname",
            sock_getsockname as unsafe extern "C" fn(u64, *mut u8, c_int) -> c_int
        ),
        sym!(
            "_sock_gettype",
            sock_gettype as unsafe extern "C" fn(u64, *mut c_int, *mut c_int, *mut c_int) -> c_int
        ),
        sym!(
            "_sock_inject_data_out",
            sock_inject_data_out as unsafe extern "C" fn(u64, *const u8, u64, u64, u32) -> c_int
        ),
        sym!(
            "_sock_inject_data_in",
            sock_inject_data_in as unsafe extern "C" fn(u64, *const u8, u64, u64, u32) -> c_int
        ),
        sym!(
            "_ipf_addv4",
            ipf_addv4 as unsafe extern "C" fn(*const [u8; IpfFilter::SIZE], *mut u64) -> c_int
        ),
        sym!(
            "_ipf_addv6",
            ipf_addv6 as unsafe extern "C" fn(*const [u8; IpfFilter::SIZE], *mut u64) -> c_int
        ),
        sym!("_ipf_remove", ipf_remove as extern "C" fn(u64) -> c_int),
        sym!(
            "_ipf_inject_output",
            ipf_inject_output as unsafe extern "C" fn(u64, u64, *mut c_void) -> c_int
        ),
        sym!(
            "_ipf_inject_input",
            ipf_inject_input as extern "C" fn(u64, u64) -> c_int
        ),
    ]
}

/// `sf_notify(cookie, so, event, NULL)`.
pub fn call_sf_notify(f: u64, cookie: u64, so: u64, event: u32) {
    watched(cookie, "sf_notify", || {
        call_sf_notify_(f, cookie, so, event)
    })
}

fn call_sf_notify_(f: u64, cookie: u64, so: u64, event: u32) {
    invoke(f, "sf_notify", || {
        // SAFETY: sf_notify: `void (*)(void *, socket_t, sflt_event_t, void *)`.
        let cb: extern "C" fn(u64, u64, u32, *mut c_void) = unsafe {
            std::mem::transmute(
                crate::emu::arch::auth_fn(f, crate::emu::arch::disc::SF_NOTIFY) as usize,
            )
        };
        cb(cookie, so, event, std::ptr::null_mut())
    });
}

// ---- the socket data path ----

/// Runs injected bytes through the `data_out` of every filter attached to `so`
/// (as xnu's `sosend` does for `sock_inject_data_out`), then queues what the
/// filters let through for the wire.
pub fn reenter_data_out(so: u64, bytes: Vec<u8>, tags: Tags) -> c_int {
    let Some(sid) = kernel::unhandle(so, Kind::Socket) else {
        return EINVAL;
    };
    let attached = attached_filters(sid);
    match data_through(so, &attached, bytes, &tags) {
        Ok(b) => {
            kernel::with(|k| {
                if let Some(s) = k.sflt.sockets.get_mut(&sid) {
                    s.injected_out.push(b);
                }
            });
            0
        }
        Err(e) => e,
    }
}

pub fn attached_filters(sid: u64) -> Vec<(u32, SfltFilter, u64)> {
    kernel::with(|k| {
        let pairs = k
            .sflt
            .sockets
            .get(&sid)
            .map(|s| s.attached.clone())
            .unwrap_or_default();
        pairs
            .into_iter()
            .filter_map(|(h, c)| k.sflt.regs.get(&h).map(|r| (h, r.filter, c)))
            .collect()
    })
}

/// Runs `bytes` through each filter's `sf_data_out`; Ok(bytes the stack sends) or the errno.
pub fn data_through(
    so: u64,
    attached: &[(u32, SfltFilter, u64)],
    mut bytes: Vec<u8>,
    tags: &[(u32, u16, Box<[u8]>)],
) -> Result<Vec<u8>, c_int> {
    for (_h, f, cookie) in attached {
        if f.data_out == 0 {
            continue;
        }
        let id = kernel::with(|k| {
            let id = k.mbuf_packet(&bytes);
            if let Some(h) = k.mbuf_mut(id).pkthdr.as_mut() {
                h.tags = tags.to_vec();
            }
            id
        });
        let Some((r, m)) = call_sf_data(f.data_out, "sf_data_out", *cookie, so, mbuf_handle(id))
        else {
            return Err(EINVAL);
        };
        match r {
            0 => {
                let mid =
                    kernel::with(|k| k.mbuf_live(m, "the stack, after sf_data_out returned 0"));
                let Some(mid) = mid else { return Err(EINVAL) };
                bytes = kernel::with(|k| k.mbuf_bytes(mid));
                kernel::with(|k| {
                    k.mbuf_stack_free(mid);
                    if mid != id {
                        k.mbuf_stack_free(id);
                    }
                });
            }
            EJUSTRETURN => {
                kernel::with(|k| k.mbuf_kept_by_kext(m, "sf_data_out"));
                return Err(EJUSTRETURN);
            }
            e => {
                kernel::with(|k| k.mbuf_stack_free_returned(m, "sf_data_out"));
                return Err(e);
            }
        }
    }
    Ok(bytes)
}
