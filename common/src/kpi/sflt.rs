//! Socket filters (`sflt_register`, com.apple.kpi.bsd; xnu bsd/sys/kpi_socketfilter.h)
//! in safe Rust, the Rust-for-Linux way: a [`SocketFilter`] trait whose methods
//! mirror the callbacks with typed arguments, and a generic [`VTable`] of
//! `extern "C"` trampolines that builds the 192-byte `sflt_filter` as a constant.
//!
//! - The per-socket **cookie** is owned by the wrapper: [`SocketFilter::attach`]
//!   returns it, the trampoline moves it into a [`KBox`] behind its own xnu
//!   mutex (a failed allocation declines the socket: the filter is simply not
//!   attached to it — fail-open, see README), every other callback borrows it
//!   *under that mutex*, and [`SocketFilter::detach`] receives it by value — it
//!   is dropped exactly once, there. The mutex is needed: xnu drops the socket
//!   lock before calling `sf_notify`, `sf_connect_out` and the data hooks
//!   (`sflt_notify_internal`, `sflt_data_out`… in bsd/kern/kpi_socketfilter.c
//!   call `socket_unlock(so, 0)` before the filter), so two callbacks of one
//!   socket can run at once on two CPUs. Blocking is allowed there (the socket
//!   lock was just dropped; xnu itself takes `sock_filter_lock`, an `lck_rw`,
//!   around each call). `sf_attach` and `sf_detach` need no lock: attach
//!   creates the cookie, and xnu calls detach only when the last reference to
//!   the filter entry is gone (no callback can be running).
//! - `connect_out`'s destination is a [`SockAddrMut`]: read it as an
//!   [`Endpoint`], rewrite it in place with one of the socket's family (the
//!   kernel copies back only the original `sa_len` bytes, so a family change
//!   could never work).
//! - Data hooks see a [`Data`] view and return `Ok` (pass) or an errno (the
//!   stack frees the mbuf). The wrapper never takes mbufs (`EJUSTRETURN`), so no
//!   callback can leak or double-free one.
//! - `notify` may return an [`Injection`]: the trampoline allocates, tags and
//!   injects the bytes *after* the cookie borrow ends (the kernel runs every
//!   filter's `data_out` again, synchronously, on injected data — a borrow held
//!   across the injection would alias), then reports the outcome to `injected`.
//!   Filters recognise their own data with [`Data::has_tag`].
//!
//! The kernel copies `sflt_filter`, but on arm64e it calls the callbacks through
//! pointers that must be signed: [`socket_filter!`](crate::socket_filter) puts the
//! structure in a static and marks each callback slot with
//! [`sign_slot!`](crate::sign_slot). The slots the wrapper fills are always the
//! same nine (the trait's defaults pass), so the marks are unconditional; the
//! others stay NULL.
//!
//! Unload: [`unregister`] starts the asynchronous unregistration; the
//! `sf_unregistered` trampoline records its completion, and [`is_unregistered`]
//! and [`attached`] tell stop when it may succeed.

use core::ffi::{CStr, c_int, c_void};
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::KextError;
use super::alloc::KBox;
use super::errno::{EINVAL, ENOMEM, Errno};
use super::lock::Mutex;
use crate::net::addr::{Endpoint, Family, IpAddr};
use crate::sys::{
    self, AF_INET, AF_INET6, MBUF_DONTWAIT, SFLT_EXTENDED, SFLT_GLOBAL, mbuf_t, sflt_filter,
    sflt_filter_ext, sockaddr, socket_t,
};

/// The socket a callback is about (borrowed for the callback).
pub struct Socket {
    so: socket_t,
}

const SOCKADDR_MAX: usize = 28; // sizeof(struct sockaddr_in6)

/// Parses a `struct sockaddr_in`/`sockaddr_in6` (BSD layout, length byte first).
pub fn parse_sockaddr(b: &[u8]) -> Option<Endpoint> {
    let family = i32::from(*b.get(1)?);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    if family == AF_INET {
        let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(Endpoint::new(IpAddr::V4(a), port))
    } else if family == AF_INET6 {
        let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        Some(Endpoint::new(IpAddr::V6(a), port))
    } else {
        None
    }
}

/// Writes `e` over the address in `b` (same family; `sa_len`, flow info and scope kept).
pub fn write_sockaddr(e: &Endpoint, b: &mut [u8]) -> Result<(), Errno> {
    let family = i32::from(*b.get(1).ok_or(EINVAL)?);
    let port = e.port.to_be_bytes();
    let (range, addr): (core::ops::Range<usize>, &[u8]) = match e.addr {
        IpAddr::V4(ref a) if family == AF_INET => (4..8, a),
        IpAddr::V6(ref a) if family == AF_INET6 => (8..24, a),
        _ => return Err(EINVAL),
    };
    // Check both fields fit before writing either: never a half-rewritten address.
    if b.len() < range.end {
        return Err(EINVAL);
    }
    for (d, s) in b.iter_mut().skip(2).zip(port.iter()) {
        *d = *s;
    }
    for (d, s) in b.iter_mut().skip(range.start).zip(addr.iter()) {
        *d = *s;
    }
    Ok(())
}

impl Socket {
    fn name(&self, peer: bool) -> Option<Endpoint> {
        let mut buf = [0u8; SOCKADDR_MAX];
        let p = buf.as_mut_ptr().cast::<sockaddr>();
        // SAFETY: `buf` holds SOCKADDR_MAX bytes; the KPI copies at most that many.
        let r = unsafe {
            if peer {
                sys::sock_getpeername(self.so, p, SOCKADDR_MAX as c_int)
            } else {
                sys::sock_getsockname(self.so, p, SOCKADDR_MAX as c_int)
            }
        };
        if r != 0 {
            return None;
        }
        parse_sockaddr(&buf)
    }

    /// The socket's local address (the client address a proxy sees).
    pub fn local(&self) -> Option<Endpoint> {
        self.name(false)
    }

    /// The socket's peer address.
    pub fn peer(&self) -> Option<Endpoint> {
        self.name(true)
    }

    /// The socket's address family (`None` for other domains).
    pub fn family(&self) -> Option<Family> {
        let (mut d, mut t, mut p) = (0, 0, 0);
        // SAFETY: three valid out-parameters.
        let r = unsafe { sys::sock_gettype(self.so, &mut d, &mut t, &mut p) };
        match (r, d) {
            (0, AF_INET) => Some(Family::V4),
            (0, AF_INET6) => Some(Family::V6),
            _ => None,
        }
    }

    /// Injects `bytes` on the outbound path as the socket's next data, tagged
    /// with `tag` (so the filter's own `data_out` can recognise it). The kernel
    /// consumes the mbuf in every case; on failure nothing was sent.
    fn inject_data_out(&self, bytes: &[u8], tag: Option<MbufTag>) -> Result<(), Errno> {
        let mut m: mbuf_t = core::ptr::null_mut();
        // SAFETY: out-parameter `m`; NULL maxchunks is allowed.
        let r = unsafe {
            sys::mbuf_allocpacket(MBUF_DONTWAIT, bytes.len(), core::ptr::null_mut(), &mut m)
        };
        if r != 0 || m.is_null() {
            return Err(if r != 0 { Errno::from_raw(r) } else { ENOMEM });
        }
        // SAFETY: `m` is a packet of `bytes.len()` bytes that we own; `bytes` is readable.
        let r =
            unsafe { sys::mbuf_copyback(m, 0, bytes.len(), bytes.as_ptr().cast(), MBUF_DONTWAIT) };
        if r != 0 {
            // SAFETY: we own `m` and give it back once.
            unsafe { sys::mbuf_freem(m) };
            return Err(Errno::from_raw(r));
        }
        if let Some(t) = tag {
            let mut p: *mut c_void = core::ptr::null_mut();
            // SAFETY: `m` has a packet header; out-parameter `p`.
            let r = unsafe { sys::mbuf_tag_allocate(m, t.id, t.ty, 1, MBUF_DONTWAIT, &mut p) };
            if r != 0 {
                // SAFETY: we still own `m`.
                unsafe { sys::mbuf_freem(m) };
                return Err(Errno::from_raw(r));
            }
        }
        // SAFETY: `m` is ours to give; sock_inject_data_out always consumes it.
        Errno::check(unsafe {
            sys::sock_inject_data_out(self.so, core::ptr::null(), m, core::ptr::null_mut(), 0)
        })
    }
}

/// The most bytes one [`Injection`] carries (a PROXY v2 header with the
/// socket filter's TLVs: `proxy_v2::MAX_LEN`).
pub const MAX_INJECTION: usize = 112;

/// Bytes a filter wants injected on the outbound path (at most
/// [`MAX_INJECTION`]), with the tag that marks them as its own.
#[derive(Debug, Clone, Copy)]
pub struct Injection {
    bytes: [u8; MAX_INJECTION],
    len: u8,
    tag: Option<MbufTag>,
}

impl Injection {
    /// `bytes` (at most [`MAX_INJECTION`]; `None` when longer) tagged with `tag`.
    pub fn new(bytes: &[u8], tag: Option<MbufTag>) -> Option<Injection> {
        let len = u8::try_from(bytes.len())
            .ok()
            .filter(|l| usize::from(*l) <= MAX_INJECTION)?;
        let mut b = [0u8; MAX_INJECTION];
        for (d, s) in b.iter_mut().zip(bytes) {
            *d = *s;
        }
        Some(Injection { bytes: b, len, tag })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// An mbuf tag (module id and type) identifying data this kext injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbufTag {
    id: u32,
    ty: u16,
}

impl MbufTag {
    /// The tag for module `name` (usually the bundle identifier), type `ty`.
    pub fn find(name: &CStr, ty: u16) -> Result<MbufTag, Errno> {
        let mut id = 0u32;
        // SAFETY: NUL-terminated module name; out-parameter `id`.
        Errno::check(unsafe { sys::mbuf_tag_id_find(name.as_ptr(), &mut id) })?;
        Ok(MbufTag { id, ty })
    }
}

/// The data of a data hook (borrowed; the stack keeps ownership).
pub struct Data<'a> {
    m: mbuf_t,
    _p: PhantomData<&'a ()>,
}

impl Data<'_> {
    /// Total length (packet header length).
    pub fn len(&self) -> usize {
        // SAFETY: a live mbuf for the duration of the callback.
        unsafe { sys::mbuf_pkthdr_len(self.m) }
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the mbuf carries `tag` (data this kext injected).
    pub fn has_tag(&self, tag: MbufTag) -> bool {
        let mut len = 0usize;
        let mut p: *mut c_void = core::ptr::null_mut();
        // SAFETY: a live mbuf; out-parameters.
        unsafe { sys::mbuf_tag_find(self.m, tag.id, tag.ty, &mut len, &mut p) == 0 }
    }
}

/// The destination of `connect_out`, writable.
pub struct SockAddrMut<'a> {
    sa: NonNull<u8>,
    len: usize,
    _p: PhantomData<&'a mut [u8]>,
}

impl SockAddrMut<'_> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the kernel's buffer holds `len` (= sa_len) bytes for the callback.
        unsafe { core::slice::from_raw_parts(self.sa.as_ptr(), self.len) }
    }

    /// The destination.
    pub fn endpoint(&self) -> Option<Endpoint> {
        parse_sockaddr(self.bytes())
    }

    /// Rewrites the destination (same family as the socket's address).
    pub fn set(&mut self, e: &Endpoint) -> Result<(), Errno> {
        // SAFETY: as in `bytes`; the kernel passes a private copy that it reads back
        // (xnu-3789 and later), so writing within sa_len is allowed.
        let b = unsafe { core::slice::from_raw_parts_mut(self.sa.as_ptr(), self.len) };
        write_sockaddr(e, b)
    }
}

/// Socket events delivered to `notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `sock_evt_connecting`.
    Connecting,
    /// `sock_evt_connected`.
    Connected,
    /// `sock_evt_disconnecting`.
    Disconnecting,
    /// `sock_evt_disconnected`.
    Disconnected,
    /// `sock_evt_closing`.
    Closing,
    /// Any other event.
    Other(u32),
}

impl Event {
    fn from_raw(e: u32) -> Event {
        match e {
            sys::sock_evt_connecting => Event::Connecting,
            sys::sock_evt_connected => Event::Connected,
            sys::sock_evt_disconnecting => Event::Disconnecting,
            sys::sock_evt_disconnected => Event::Disconnected,
            sys::sock_evt_closing => Event::Closing,
            other => Event::Other(other),
        }
    }
}

/// A socket filter's callbacks. Implement on a unit type; state lives in a
/// [`Global`](super::global::Global) and in the per-socket cookie.
pub trait SocketFilter: 'static {
    /// Per-socket state.
    type Cookie: Send;
    /// A socket is created: return its cookie, or `Err` to stay off this socket.
    fn attach(so: &Socket) -> Result<Self::Cookie, Errno>;
    /// The filter leaves the socket: the cookie is given back and dropped.
    fn detach(cookie: Self::Cookie, so: &Socket);
    /// A socket event. Returning an [`Injection`] sends those bytes out on the
    /// socket once the cookie is no longer borrowed (the kernel re-enters
    /// `data_out` of every filter with them, this one included); the outcome is
    /// reported to [`SocketFilter::injected`].
    fn notify(_cookie: &mut Self::Cookie, _so: &Socket, _event: Event) -> Option<Injection> {
        None
    }
    /// The outcome of the injection `notify` asked for.
    fn injected(_cookie: &mut Self::Cookie, _so: &Socket, _result: Result<(), Errno>) {}
    /// An outgoing connection; `to` may be rewritten. `Err` fails the connect.
    fn connect_out(
        _cookie: &mut Self::Cookie,
        _so: &Socket,
        _to: &mut SockAddrMut<'_>,
    ) -> Result<(), Errno> {
        Ok(())
    }
    /// Outgoing data. `Err` drops it (the stack frees it and reports the error).
    fn data_out(_cookie: &mut Self::Cookie, _so: &Socket, _data: &Data<'_>) -> Result<(), Errno> {
        Ok(())
    }
    /// Incoming data. `Err` drops it.
    fn data_in(_cookie: &mut Self::Cookie, _so: &Socket, _data: &Data<'_>) -> Result<(), Errno> {
        Ok(())
    }
    /// The kernel finished unregistering `handle` (after every socket was detached).
    fn unregistered(_handle: u32) {}
}

static ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// Sockets currently attached to any filter of this kext (cookies alive).
pub fn attached() -> usize {
    ATTACHED.load(Ordering::Acquire)
}

static UNFILTERED: AtomicUsize = AtomicUsize::new(0);

/// Sockets left unfiltered because their cookie (or its lock) could not be
/// allocated at attach: the documented fail-open of the socket filter.
pub fn unfiltered() -> usize {
    UNFILTERED.load(Ordering::Acquire)
}

const MAX_HANDLES: usize = 4;
const STATE_REGISTERED: u32 = 1;
const STATE_UNREGISTERING: u32 = 2;
const STATE_DONE: u32 = 3;
// (handle, state) pairs; handle 0 = free slot.
static HANDLES: [AtomicU32; MAX_HANDLES] = [const { AtomicU32::new(0) }; MAX_HANDLES];
static STATES: [AtomicU32; MAX_HANDLES] = [const { AtomicU32::new(0) }; MAX_HANDLES];

fn slot(handle: u32) -> Option<usize> {
    HANDLES
        .iter()
        .position(|h| h.load(Ordering::Acquire) == handle)
}

fn set_state(handle: u32, state: u32) {
    if let Some(s) = slot(handle).and_then(|i| STATES.get(i)) {
        s.store(state, Ordering::Release);
    }
}

/// The `sflt_filter` a [`VTable`] builds and the sockets it is for
/// (domain, type, protocol), in a static (see [`socket_filter!`](crate::socket_filter)).
pub struct FilterDef {
    /// The structure handed to `sflt_register` (which copies it).
    pub raw: sflt_filter,
    domain: c_int,
    ty: c_int,
    protocol: c_int,
}

// SAFETY: immutable after compilation; the name pointer refers to a static C string.
unsafe impl Sync for FilterDef {}

impl super::lifecycle::Registration for &'static FilterDef {
    fn register(self) -> Result<(), KextError> {
        register(self, self.domain, self.ty, self.protocol).map_err(|_| KextError::Failed)
    }

    fn unregister(self) -> Result<(), KextError> {
        unregister(self.raw.sf_handle).map_err(|_| KextError::Busy)
    }

    /// `sf_unregistered` ran (or the filter was never registered); sockets
    /// may still hold cookies until then, never after.
    fn released(self) -> bool {
        is_unregistered(self.raw.sf_handle)
    }
}

/// Registers `def` for `domain`/`type`/`protocol` (e.g. PF_INET, SOCK_STREAM, IPPROTO_TCP).
pub fn register(
    def: &'static FilterDef,
    domain: c_int,
    ty: c_int,
    protocol: c_int,
) -> Result<(), Errno> {
    let handle = def.raw.sf_handle;
    let i = match slot(handle) {
        Some(i) => i,
        None => HANDLES
            .iter()
            .position(|h| {
                h.compare_exchange(0, handle, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or(ENOMEM)?,
    };
    // SAFETY: a complete sflt_filter with attach/detach, non-zero handle, zeroed reserved fields;
    // the kernel copies it.
    let r = unsafe { sys::sflt_register(&def.raw, domain, ty, protocol) };
    if r == 0 {
        if let Some(s) = STATES.get(i) {
            s.store(STATE_REGISTERED, Ordering::Release);
        }
        Ok(())
    } else {
        Err(Errno::from_raw(r))
    }
}

/// Starts unregistering `handle` (once); `sf_unregistered` completes it later.
pub fn unregister(handle: u32) -> Result<(), Errno> {
    let Some(st) = slot(handle).and_then(|i| STATES.get(i)) else {
        return Ok(());
    };
    if st
        .compare_exchange(
            STATE_REGISTERED,
            STATE_UNREGISTERING,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return Ok(()); // never registered, or already unregistering/unregistered
    }
    // SAFETY: a handle this kext registered.
    match unsafe { sys::sflt_unregister(handle) } {
        0 => Ok(()),
        e => {
            st.store(STATE_REGISTERED, Ordering::Release);
            Err(Errno::from_raw(e))
        }
    }
}

/// Whether `handle` is not registered with the kernel (never was, or `sf_unregistered` ran).
pub fn is_unregistered(handle: u32) -> bool {
    match slot(handle).and_then(|i| STATES.get(i)) {
        Some(s) => matches!(s.load(Ordering::Acquire), 0 | STATE_DONE),
        None => true,
    }
}

/// The trampolines for `F`.
pub struct VTable<F>(PhantomData<F>);

impl<F: SocketFilter> VTable<F> {
    /// The `sflt_filter` for handle `handle` and name `name`: global, extended
    /// (`sf_ext_len` set, reserved words zero), for sockets of
    /// `domain`/`ty`/`protocol` (e.g. PF_INET, SOCK_STREAM, IPPROTO_TCP).
    pub const fn filter(
        handle: u32,
        name: &'static CStr,
        (domain, ty, protocol): (c_int, c_int, c_int),
    ) -> FilterDef {
        let raw = sflt_filter {
            sf_handle: handle,
            sf_flags: SFLT_GLOBAL | SFLT_EXTENDED,
            sf_name: name.as_ptr().cast_mut(),
            sf_unregistered: Some(Self::unregistered),
            sf_attach: Some(Self::attach),
            sf_detach: Some(Self::detach),
            sf_notify: Some(Self::notify),
            sf_getpeername: None,
            sf_getsockname: None,
            sf_data_in: Some(Self::data_in),
            sf_data_out: Some(Self::data_out),
            sf_connect_in: None,
            sf_connect_out: Some(Self::connect_out),
            sf_bind: None,
            sf_setoption: None,
            sf_getoption: None,
            sf_listen: None,
            sf_ioctl: None,
            sf_ext: sflt_filter_ext {
                sf_ext_len: core::mem::size_of::<sflt_filter_ext>() as u32,
                sf_ext_accept: None,
                sf_ext_rsvd: [core::ptr::null_mut(); 5],
            },
        };
        FilterDef {
            raw,
            domain,
            ty,
            protocol,
        }
    }

    unsafe extern "C" fn unregistered(handle: u32) {
        set_state(handle, STATE_DONE);
        F::unregistered(handle);
    }

    unsafe extern "C" fn attach(cookie: *mut *mut c_void, so: socket_t) -> c_int {
        if cookie.is_null() {
            return EINVAL.raw();
        }
        let s = Socket { so };
        let c = match F::attach(&s) {
            Ok(c) => c,
            Err(e) => return e.raw(),
        };
        let c = match Mutex::try_new(c) {
            Ok(m) => m,
            Err((_, c)) => {
                F::detach(c, &s);
                UNFILTERED.fetch_add(1, Ordering::AcqRel);
                return ENOMEM.raw();
            }
        };
        match KBox::try_new(c) {
            Ok(b) => {
                // SAFETY: `cookie` is the kernel's out-parameter (checked non-NULL).
                unsafe { cookie.write(KBox::into_raw(b).as_ptr().cast()) };
                ATTACHED.fetch_add(1, Ordering::AcqRel);
                0
            }
            Err((_, c)) => {
                F::detach(c.into_inner(), &s);
                UNFILTERED.fetch_add(1, Ordering::AcqRel);
                ENOMEM.raw()
            }
        }
    }

    /// # Safety
    /// `cookie` is NULL or a cookie `attach` made and `detach` has not consumed.
    unsafe fn with_cookie<R>(
        cookie: *mut c_void,
        default: R,
        f: impl FnOnce(&mut F::Cookie) -> R,
    ) -> R {
        match NonNull::new(cookie.cast::<Mutex<F::Cookie>>()) {
            Some(p) => {
                // Callbacks of one socket may run concurrently (the socket lock
                // is dropped around them): the `&mut` comes from the cookie's mutex.
                // SAFETY: the caller's contract: the cookie is alive (xnu holds
                // a reference to the filter entry for the call).
                let m = unsafe { p.as_ref() };
                f(&mut m.lock())
            }
            None => default,
        }
    }

    unsafe extern "C" fn detach(cookie: *mut c_void, so: socket_t) {
        if let Some(p) = NonNull::new(cookie.cast::<Mutex<F::Cookie>>()) {
            // SAFETY: the kernel calls detach once per successful attach, with that cookie.
            let b = unsafe { KBox::from_raw(p) };
            ATTACHED.fetch_sub(1, Ordering::AcqRel);
            let s = Socket { so };
            // Move the cookie out of the box and its mutex: the box frees its
            // memory, the mutex its lock, and `detach` drops the value, once each.
            F::detach(take_box(b).into_inner(), &s);
        }
    }

    unsafe extern "C" fn notify(
        cookie: *mut c_void,
        so: socket_t,
        event: u32,
        _param: *mut c_void,
    ) {
        let s = Socket { so };
        // SAFETY: an attached socket's cookie.
        let inj = unsafe {
            Self::with_cookie(cookie, None, |c| F::notify(c, &s, Event::from_raw(event)))
        };
        if let Some(inj) = inj {
            // The cookie is not borrowed here: the kernel runs data_out (which
            // borrows it) from inside sock_inject_data_out.
            let r = s.inject_data_out(inj.as_bytes(), inj.tag);
            // SAFETY: as above.
            unsafe { Self::with_cookie(cookie, (), |c| F::injected(c, &s, r)) }
        }
    }

    unsafe extern "C" fn connect_out(
        cookie: *mut c_void,
        so: socket_t,
        to: *const sockaddr,
    ) -> c_int {
        let Some(sa) = NonNull::new(to.cast_mut().cast::<u8>()) else {
            return 0;
        };
        // SAFETY: `to` points to a sockaddr whose first byte is its length.
        let len = usize::from(unsafe { sa.as_ptr().read() }).min(SOCKADDR_MAX);
        let mut a = SockAddrMut {
            sa,
            len,
            _p: PhantomData,
        };
        let s = Socket { so };
        // SAFETY: an attached socket's cookie.
        let r = unsafe { Self::with_cookie(cookie, Ok(()), |c| F::connect_out(c, &s, &mut a)) };
        r.err().map_or(0, Errno::raw)
    }

    unsafe fn data(cookie: *mut c_void, so: socket_t, data: *mut mbuf_t, out: bool) -> c_int {
        if data.is_null() {
            return 0;
        }
        // SAFETY: the kernel's `mbuf_t *` slot, valid for the call.
        let m = unsafe { data.read() };
        if m.is_null() {
            return 0;
        }
        let d = Data { m, _p: PhantomData };
        let s = Socket { so };
        // SAFETY: an attached socket's cookie.
        let r = unsafe {
            Self::with_cookie(cookie, Ok(()), |c| {
                if out {
                    F::data_out(c, &s, &d)
                } else {
                    F::data_in(c, &s, &d)
                }
            })
        };
        // Never EJUSTRETURN: the stack keeps (and on error frees) the mbuf.
        match r {
            Ok(()) => 0,
            Err(e) if e.raw() == sys::EJUSTRETURN || e.raw() == 0 => EINVAL.raw(),
            Err(e) => e.raw(),
        }
    }

    unsafe extern "C" fn data_out(
        cookie: *mut c_void,
        so: socket_t,
        _to: *const sockaddr,
        data: *mut mbuf_t,
        _control: *mut mbuf_t,
        _flags: u32,
    ) -> c_int {
        // SAFETY: forwarded kernel arguments.
        unsafe { Self::data(cookie, so, data, true) }
    }

    unsafe extern "C" fn data_in(
        cookie: *mut c_void,
        so: socket_t,
        _from: *const sockaddr,
        data: *mut mbuf_t,
        _control: *mut mbuf_t,
        _flags: u32,
    ) -> c_int {
        // SAFETY: forwarded kernel arguments.
        unsafe { Self::data(cookie, so, data, false) }
    }
}

/// Moves the value out of a box (freeing the box's memory).
fn take_box<T>(b: KBox<T>) -> T {
    super::alloc::into_inner(b)
}

/// Declares a socket filter static for `F` and marks its callback slots for
/// arm64e signing:
///
/// ```ignore
/// common::socket_filter!(static FILTER_V4: MyFilter = handle 0x5052_5834, name c"net.prx.v4",
///     sockets (PF_INET, SOCK_STREAM, IPPROTO_TCP));
/// ```
#[macro_export]
macro_rules! socket_filter {
    (static $name:ident : $f:ty = handle $handle:expr, name $cname:expr, sockets $sockets:expr) => {
        static $name: $crate::kpi::sflt::FilterDef =
            $crate::kpi::sflt::VTable::<$f>::filter($handle, $cname, $sockets);
        $crate::sign_slot!(&raw const $name.raw.sf_unregistered, 0x0A98);
        $crate::sign_slot!(&raw const $name.raw.sf_attach, 0xE4FE);
        $crate::sign_slot!(&raw const $name.raw.sf_detach, 0x73D8);
        $crate::sign_slot!(&raw const $name.raw.sf_notify, 0xA0D8);
        $crate::sign_slot!(&raw const $name.raw.sf_data_in, 0x0F74);
        $crate::sign_slot!(&raw const $name.raw.sf_data_out, 0x0F74);
        $crate::sign_slot!(&raw const $name.raw.sf_connect_out, 0xBCAD);
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "host tests")]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip_keeps_the_family() {
        let mut v4 = [16u8, 2, 0, 80, 203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_sockaddr(&v4),
            Some(Endpoint::new(IpAddr::V4([203, 0, 113, 10]), 80))
        );
        write_sockaddr(&Endpoint::new(IpAddr::V4([127, 0, 0, 1]), 3128), &mut v4).unwrap();
        assert_eq!(&v4[..8], &[16, 2, 0x0c, 0x38, 127, 0, 0, 1]);
        assert_eq!(
            write_sockaddr(&Endpoint::new(IpAddr::V6([0; 16]), 1), &mut v4),
            Err(EINVAL)
        );
        let mut v6 = [0u8; 28];
        v6[0] = 28;
        v6[1] = 30;
        write_sockaddr(&Endpoint::new(IpAddr::V6([1; 16]), 443), &mut v6).unwrap();
        assert_eq!(
            parse_sockaddr(&v6),
            Some(Endpoint::new(IpAddr::V6([1; 16]), 443))
        );
    }
}
