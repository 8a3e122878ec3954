//! Dropping root once the privileged controls are open (as privileged
//! daemons do): supplementary groups, group, then user; checked afterwards.

use std::ffi::CString;

/// The target of a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: libc::uid_t,
    /// Primary group id.
    pub gid: libc::gid_t,
}

/// Looks up `user` in the user database.
pub fn lookup_user(user: &str) -> Result<Ids, String> {
    let name = CString::new(user).map_err(|_| format!("user `{user}`: contains a NUL byte"))?;
    let mut pw: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; `buf` outlives `pw`'s use.
    let r = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() {
        return Err(format!(
            "user `{user}` does not exist (set `user` in [prxd] to an existing unprivileged user)"
        ));
    }
    Ok(Ids {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is plain old data (integers and pointers); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Drops from root to `ids` for good (real, effective and saved ids), and
/// checks that root cannot be regained.
pub fn drop_to(ids: Ids) -> Result<(), String> {
    let groups = [ids.gid];
    // SAFETY: `groups` is valid for one element.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: plain system calls; results checked.
    if unsafe { libc::setgid(ids.gid) } != 0 {
        return Err(format!(
            "setgid({}): {}",
            ids.gid,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(ids.uid) } != 0 {
        return Err(format!(
            "setuid({}): {}",
            ids.uid,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above; must fail now.
    if ids.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err("root could be regained after dropping privileges".into());
    }
    // SAFETY: getters cannot fail.
    let (uid, euid, gid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) };
    if uid != ids.uid || euid != ids.uid || gid != ids.gid {
        return Err(format!(
            "after the drop: uid {uid}, euid {euid}, gid {gid} (wanted {}/{})",
            ids.uid, ids.gid
        ));
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE as far as the kernel allows: to the hard
/// limit, or (macOS refuses more than `kern.maxfilesperproc`) the largest of
/// a few lower values it accepts. Returns (before, after).
pub fn raise_nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    let before: u64 = r.rlim_cur;
    let hard = r.rlim_max;
    for want in [hard, 1 << 20, 1 << 16, 24_576, 10_240] {
        if want > hard || want <= r.rlim_cur {
            continue;
        }
        let n = libc::rlimit {
            rlim_cur: want,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) } == 0 {
            return (before, want);
        }
    }
    (before, before)
}
