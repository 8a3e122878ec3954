//! kern_control KPIs (`ctl_register`, `ctl_deregister`, `ctl_enqueuedata`,
//! `ctl_getenqueuespace`; xnu bsd/sys/kern_control.h) and the client side the
//! scenarios use: connect (privileged or not), setsockopt, getsockopt (in/out,
//! as xnu's `ctl_ctloutput` does it) and disconnect, each calling into the kext.

use std::ffi::{c_int, c_void};

use common::sys::{EBUSY, EEXIST, EINVAL, ENOBUFS, ENOENT, ENOMEM, ENOTSUP, EPERM};

use super::call::{invoke, put};
use crate::emu::kernel::ctl::CtlReg;
use crate::emu::kernel::fault::FaultPoint;
use crate::emu::kernel::{self, Kind};

/// `CTL_FLAG_PRIVILEGED`.
pub const CTL_FLAG_PRIVILEGED: u32 = 1;
const REG_SIZE: usize = 160;

fn q(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}
fn d(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}

unsafe extern "C" fn ctl_register(reg: *mut [u8; REG_SIZE], out: *mut u64) -> c_int {
    if reg.is_null() || out.is_null() {
        kernel::with(|k| k.violation("ctl-null-argument", "ctl_register: NULL argument"));
        return EINVAL;
    }
    // SAFETY: ctl_register reads a `struct kern_ctl_reg` (160 bytes, public view).
    let b = unsafe { reg.read_unaligned() };
    let name_end = b[..96].iter().position(|c| *c == 0).unwrap_or(96);
    let name = String::from_utf8_lossy(&b[..name_end]).into_owned();
    let r = kernel::with(|k| {
        if name.is_empty() {
            k.violation("ctl-required-field", "ctl_register: empty ctl_name");
            return Err(EINVAL);
        }
        if k.ctl.regs.iter().any(|r| r.registered && r.name == name) {
            return Err(EEXIST);
        }
        if k.faults.should_fail(FaultPoint::CtlRegister) {
            k.record(
                format!("ctl_register '{name}' (fault: ENOMEM)"),
                ENOMEM.into(),
            );
            return Err(ENOMEM);
        }
        let cbs = [
            ("ctl_connect", q(&b, 120)),
            ("ctl_disconnect", q(&b, 128)),
            ("ctl_send", q(&b, 136)),
            ("ctl_setopt", q(&b, 144)),
            ("ctl_getopt", q(&b, 152)),
        ];
        if cbs[0].1 == 0 {
            k.violation("ctl-required-field", "ctl_register: ctl_connect is NULL");
            return Err(EINVAL);
        }
        for (n, a) in cbs {
            if a != 0 && !k.is_kext_code(crate::emu::arch::strip(a)) {
                k.violation(
                    "callback-outside-kext",
                    format!("ctl_register: {n} = {a:#x} is not in the kext's code"),
                );
                return Err(EINVAL);
            }
        }
        let id = k.new_id();
        let ctl_id = 0x1000 + id as u32;
        k.ctl.regs.push(CtlReg {
            id,
            name: name.clone(),
            flags: d(&b, 104),
            ctl_id,
            connect: cbs[0].1,
            disconnect: cbs[1].1,
            send: cbs[2].1,
            setopt: cbs[3].1,
            getopt: cbs[4].1,
            userdata: 0,
            clients: Vec::new(),
            registered: true,
        });
        k.record(format!("ctl_register '{name}'"), 0);
        Ok((kernel::handle(Kind::KernCtl, id), ctl_id))
    });
    match r {
        Ok((h, ctl_id)) => {
            // SAFETY: xnu writes the assigned id back (ctl_id at offset 96, ctl_unit at 100).
            unsafe {
                put(reg.cast::<u8>().add(96).cast::<u32>(), ctl_id);
                put(out, h);
            }
            0
        }
        Err(e) => e,
    }
}

fn reg_mut(k: &mut kernel::Kernel, h: u64) -> Option<&mut CtlReg> {
    let id = kernel::unhandle(h, Kind::KernCtl)?;
    k.ctl.regs.iter_mut().find(|r| r.id == id && r.registered)
}

extern "C" fn ctl_deregister(h: u64) -> c_int {
    kernel::with(|k| {
        let Some(r) = reg_mut(k, h) else {
            k.violation(
                "ctl-bad-ref",
                format!("ctl_deregister({h:#x}): not a registered control"),
            );
            return EINVAL;
        };
        if !r.clients.is_empty() {
            return EBUSY;
        }
        if k.faults.should_fail(FaultPoint::CtlDeregister) {
            k.record("ctl_deregister (fault: EBUSY)", EBUSY.into());
            return EBUSY;
        }
        let Some(r) = reg_mut(k, h) else {
            return EINVAL;
        };
        r.registered = false;
        0
    })
}

unsafe extern "C" fn ctl_enqueuedata(
    h: u64,
    unit: u32,
    data: *const c_void,
    len: usize,
    _flags: u32,
) -> c_int {
    let bytes = if data.is_null() || len == 0 {
        Vec::new()
    } else {
        // SAFETY: ctl_enqueuedata's contract: `data` holds `len` bytes.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec()
    };
    kernel::with(|k| {
        if k.faults.should_fail(FaultPoint::CtlEnqueue) {
            return ENOBUFS;
        }
        let Some(r) = reg_mut(k, h) else {
            return EINVAL;
        };
        let id = r.id;
        if !r.clients.iter().any(|(u, _)| *u == unit) {
            return ENOENT;
        }
        k.ctl.enqueued.push((id, unit, bytes));
        0
    })
}

unsafe extern "C" fn ctl_getenqueuespace(h: u64, _unit: u32, space: *mut usize) -> c_int {
    let ok = kernel::with(|k| reg_mut(k, h).is_some());
    if !ok {
        return EINVAL;
    }
    // SAFETY: out-parameter.
    unsafe { put(space, 65536) };
    0
}

// ---- the client side ----

/// A connected client: (registration id, unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub reg: u64,
    pub unit: u32,
}

fn find(reg: u64) -> Option<CtlReg> {
    kernel::with(|k| {
        k.ctl
            .regs
            .iter()
            .find(|r| r.id == reg && r.registered)
            .cloned()
    })
}

/// Connects to the control named `name`; `privileged` says whether the client
/// is root (xnu refuses unprivileged clients of a `CTL_FLAG_PRIVILEGED` control
/// with EPERM, before the kext sees them).
pub fn connect(name: &str, privileged: bool) -> Result<Client, c_int> {
    let Some(r) = kernel::with(|k| {
        k.ctl
            .regs
            .iter()
            .find(|r| r.registered && r.name == name)
            .cloned()
    }) else {
        return Err(ENOENT);
    };
    if r.flags & CTL_FLAG_PRIVILEGED != 0 && !privileged {
        return Err(EPERM);
    }
    let unit = kernel::with(|k| k.new_id() as u32);
    let mut sac = [0u8; 32];
    sac[0] = 32;
    sac[1] = 32; // AF_SYSTEM
    sac[2..4].copy_from_slice(&2u16.to_le_bytes()); // AF_SYS_CONTROL
    sac[4..8].copy_from_slice(&r.ctl_id.to_le_bytes());
    sac[8..12].copy_from_slice(&unit.to_le_bytes());
    let mut unitinfo: u64 = 0;
    let kref = kernel::handle(Kind::KernCtl, r.id);
    let res = invoke(r.connect, "ctl_connect", || {
        // SAFETY: ctl_connect: `errno_t (*)(kern_ctl_ref, struct sockaddr_ctl *, void **)`.
        let f: extern "C" fn(u64, *mut u8, *mut u64) -> c_int = unsafe {
            std::mem::transmute(crate::emu::arch::auth_fn(
                r.connect,
                crate::emu::arch::disc::CTL_CONNECT,
            ) as usize)
        };
        f(kref, sac.as_mut_ptr(), &mut unitinfo)
    })
    .ok_or(EINVAL)?;
    if res != 0 {
        return Err(res);
    }
    kernel::with(|k| {
        if let Some(x) = k.ctl.regs.iter_mut().find(|x| x.id == r.id) {
            x.clients.push((unit, unitinfo));
        }
    });
    Ok(Client { reg: r.id, unit })
}

fn unitinfo(c: Client) -> Option<(CtlReg, u64)> {
    let r = find(c.reg)?;
    let ui = r.clients.iter().find(|(u, _)| *u == c.unit)?.1;
    Some((r, ui))
}

/// `setsockopt(opt, data)` on the client's socket.
pub fn setopt(c: Client, opt: c_int, data: &[u8]) -> c_int {
    let Some((r, ui)) = unitinfo(c) else {
        return ENOENT;
    };
    if r.setopt == 0 {
        return ENOTSUP;
    }
    // xnu copies the value into a kernel buffer first.
    let mut copy = data.to_vec();
    let kref = kernel::handle(Kind::KernCtl, r.id);
    invoke(r.setopt, "ctl_setopt", || {
        // SAFETY: ctl_setopt: `errno_t (*)(kern_ctl_ref, u_int32_t, void *, int, void *, size_t)`.
        let f: extern "C" fn(u64, u32, u64, c_int, *mut u8, usize) -> c_int = unsafe {
            std::mem::transmute(crate::emu::arch::auth_fn(
                r.setopt,
                crate::emu::arch::disc::CTL_SETOPT,
            ) as usize)
        };
        let p = if copy.is_empty() {
            std::ptr::null_mut()
        } else {
            copy.as_mut_ptr()
        };
        f(kref, c.unit, ui, opt, p, copy.len())
    })
    .unwrap_or(EINVAL)
}

/// `getsockopt(opt, buf)`: `buf` is copied in (as xnu does), the result is the
/// errno and the bytes the control reported (never more than `buf.len()`: a
/// larger length is a violation — xnu panics).
pub fn getopt(c: Client, opt: c_int, buf: &[u8]) -> (c_int, Vec<u8>) {
    let Some((r, ui)) = unitinfo(c) else {
        return (ENOENT, Vec::new());
    };
    if r.getopt == 0 {
        return (ENOTSUP, Vec::new());
    }
    let mut copy = buf.to_vec();
    let mut len = copy.len();
    let kref = kernel::handle(Kind::KernCtl, r.id);
    let e = invoke(r.getopt, "ctl_getopt", || {
        // SAFETY: ctl_getopt: `errno_t (*)(kern_ctl_ref, u_int32_t, void *, int, void *, size_t *)`.
        let f: extern "C" fn(u64, u32, u64, c_int, *mut u8, *mut usize) -> c_int = unsafe {
            std::mem::transmute(crate::emu::arch::auth_fn(
                r.getopt,
                crate::emu::arch::disc::CTL_GETOPT,
            ) as usize)
        };
        let p = if copy.is_empty() {
            std::ptr::null_mut()
        } else {
            copy.as_mut_ptr()
        };
        f(kref, c.unit, ui, opt, p, &mut len)
    })
    .unwrap_or(EINVAL);
    if len > copy.len() {
        kernel::with(|k| {
            k.violation(
                "ctl-getopt-length",
                format!(
                    "ctl_getopt reported {len} bytes for a {}-byte buffer (xnu panics)",
                    copy.len()
                ),
            )
        });
        len = copy.len();
    }
    copy.truncate(if e == 0 { len } else { 0 });
    (e, copy)
}

/// Closes the client's socket: `ctl_disconnect` into the kext.
pub fn disconnect(c: Client) {
    let Some((r, ui)) = unitinfo(c) else { return };
    kernel::with(|k| {
        if let Some(x) = k.ctl.regs.iter_mut().find(|x| x.id == r.id) {
            x.clients.retain(|(u, _)| *u != c.unit);
        }
    });
    if r.disconnect != 0 {
        let kref = kernel::handle(Kind::KernCtl, r.id);
        invoke(r.disconnect, "ctl_disconnect", || {
            // SAFETY: ctl_disconnect: `errno_t (*)(kern_ctl_ref, u_int32_t, void *)`.
            let f: extern "C" fn(u64, u32, u64) -> c_int = unsafe {
                std::mem::transmute(crate::emu::arch::auth_fn(
                    r.disconnect,
                    crate::emu::arch::disc::CTL_DISCONNECT,
                ) as usize)
            };
            f(kref, c.unit, ui)
        });
    }
}

macro_rules! sym {
    ($name:literal, $f:expr) => {
        ($name, $f as usize as u64)
    };
}

pub fn symbols() -> Vec<(&'static str, u64)> {
    vec![
        sym!(
            "_ctl_register",
            ctl_register as unsafe extern "C" fn(*mut [u8; REG_SIZE], *mut u64) -> c_int
        ),
        sym!(
            "_ctl_deregister",
            ctl_deregister as extern "C" fn(u64) -> c_int
        ),
        sym!(
            "_ctl_enqueuedata",
            ctl_enqueuedata as unsafe extern "C" fn(u64, u32, *const c_void, usize, u32) -> c_int
        ),
        sym!(
            "_ctl_getenqueuespace",
            ctl_getenqueuespace as unsafe extern "C" fn(u64, u32, *mut usize) -> c_int
        ),
    ]
}
