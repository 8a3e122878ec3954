//! How prxctl reaches the kext's control: the real kern_control socket on
//! macOS ([`KernCtl`]), or the KPI emulator's bridge over a Unix socket
//! ([`EmuBridge`], any Unix).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connected control client: socket options in, socket options out.
pub trait Transport {
    /// `setsockopt(SYSPROTO_CONTROL, opt, data)`.
    fn setopt(&mut self, opt: i32, data: &[u8]) -> io::Result<()>;
    /// `getsockopt(SYSPROTO_CONTROL, opt, buf, &len)`: `buf` holds the request on
    /// entry and the response on return; returns the response's length.
    fn getopt(&mut self, opt: i32, buf: &mut [u8]) -> io::Result<usize>;
}

/// The emulator bridge's frame kinds (see `vm/src/emu/scenarios/ctl_bridge.rs`).
pub mod frame {
    /// Connect to the control named by the data.
    pub const CONNECT: u8 = 1;
    /// setsockopt.
    pub const SETOPT: u8 = 2;
    /// getsockopt (data: the in/out buffer, as long as the caller's).
    pub const GETOPT: u8 = 3;
    /// A scenario command (tests only).
    pub const COMMAND: u8 = 4;
    /// Largest data the bridge accepts.
    pub const MAX_DATA: usize = 1 << 20;
}

/// A client of the KPI emulator's kern_control bridge. One Unix-socket
/// connection is one kern_control client; it is disconnected when dropped.
///
/// Frames: `kind u8, 0 0 0, uid u32, opt i32, len u32, data[len]` (big-endian);
/// answers: `errno i32, len u32, data[len]`. The emulated kernel applies
/// `CTL_FLAG_PRIVILEGED` to the uid in the frame (privileged: 0). The uid is
/// claimed by the client: the bridge is a test harness, not a security boundary.
pub struct EmuBridge {
    stream: UnixStream,
    uid: u32,
}

impl EmuBridge {
    /// Connects to the bridge at `path` and then to the control `name` as `uid`.
    pub fn connect(path: &Path, name: &str, uid: u32) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        let mut b = EmuBridge { stream, uid };
        b.call(frame::CONNECT, 0, name.as_bytes())?;
        Ok(b)
    }

    /// Connects to the bridge without a control client (for [`EmuBridge::command`]).
    pub fn raw(path: &Path) -> io::Result<Self> {
        Ok(EmuBridge {
            stream: UnixStream::connect(path)?,
            uid: 0,
        })
    }

    /// Sends a scenario command; returns its text answer.
    pub fn command(&mut self, cmd: &str) -> io::Result<String> {
        let out = self.call(frame::COMMAND, 0, cmd.as_bytes())?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn call(&mut self, kind: u8, opt: i32, data: &[u8]) -> io::Result<Vec<u8>> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| (*l as usize) <= frame::MAX_DATA)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
        let mut f = Vec::with_capacity(16 + data.len());
        f.extend_from_slice(&[kind, 0, 0, 0]);
        f.extend_from_slice(&self.uid.to_be_bytes());
        f.extend_from_slice(&opt.to_be_bytes());
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(data);
        self.stream.write_all(&f)?;
        let mut h = [0u8; 8];
        self.stream.read_exact(&mut h)?;
        let [e0, e1, e2, e3, l0, l1, l2, l3] = h;
        let errno = i32::from_be_bytes([e0, e1, e2, e3]);
        let n = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if n > frame::MAX_DATA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bridge answer too long",
            ));
        }
        let mut out = vec![0u8; n];
        self.stream.read_exact(&mut out)?;
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(out)
    }
}

impl Transport for EmuBridge {
    fn setopt(&mut self, opt: i32, data: &[u8]) -> io::Result<()> {
        self.call(frame::SETOPT, opt, data).map(|_| ())
    }

    fn getopt(&mut self, opt: i32, buf: &mut [u8]) -> io::Result<usize> {
        let out = self.call(frame::GETOPT, opt, buf)?;
        let dst = buf.get_mut(..out.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "response longer than the buffer",
            )
        })?;
        dst.copy_from_slice(&out);
        Ok(out.len())
    }
}

#[cfg(target_os = "macos")]
pub use kernctl::KernCtl;

/// The real kern_control socket. Compiled only for macOS and not tested here
/// (the repository's tests run on Linux, against [`EmuBridge`]).
#[cfg(target_os = "macos")]
mod kernctl {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A connected `PF_SYSTEM`/`SYSPROTO_CONTROL` socket.
    pub struct KernCtl {
        fd: OwnedFd,
    }

    impl KernCtl {
        /// socket(PF_SYSTEM, SOCK_DGRAM, SYSPROTO_CONTROL); CTLIOCGINFO for
        /// `name`'s control id; connect (unit 0: the kernel picks one).
        pub fn connect(name: &str) -> io::Result<Self> {
            // SAFETY: plain socket(2) call; the result is checked.
            let raw =
                unsafe { libc::socket(libc::PF_SYSTEM, libc::SOCK_DGRAM, libc::SYSPROTO_CONTROL) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor this function owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: ctl_info is plain old data; all-zero is valid.
            let mut info: libc::ctl_info = unsafe { std::mem::zeroed() };
            let bytes = name.as_bytes();
            if bytes.len() >= info.ctl_name.len() {
                return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
            }
            for (d, s) in info.ctl_name.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            // SAFETY: CTLIOCGINFO reads and writes a `struct ctl_info`, which `info` is.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::CTLIOCGINFO, &mut info) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let addr = libc::sockaddr_ctl {
                sc_len: std::mem::size_of::<libc::sockaddr_ctl>() as u8,
                sc_family: libc::AF_SYSTEM as u8,
                ss_sysaddr: libc::AF_SYS_CONTROL as u16,
                sc_id: info.ctl_id,
                sc_unit: 0,
                sc_reserved: [0; 5],
            };
            // SAFETY: `addr` is a valid sockaddr_ctl of the length given.
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ctl).cast(),
                    std::mem::size_of::<libc::sockaddr_ctl>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(KernCtl { fd })
        }
    }

    impl super::Transport for KernCtl {
        fn setopt(&mut self, opt: i32, data: &[u8]) -> io::Result<()> {
            // SAFETY: `data` is valid for `data.len()` bytes.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SYSPROTO_CONTROL,
                    opt,
                    data.as_ptr().cast(),
                    data.len() as libc::socklen_t,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }

        fn getopt(&mut self, opt: i32, buf: &mut [u8]) -> io::Result<usize> {
            let mut len = buf.len() as libc::socklen_t;
            // SAFETY: `buf` is valid for reads and writes of `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    self.fd.as_raw_fd(),
                    libc::SYSPROTO_CONTROL,
                    opt,
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok((len as usize).min(buf.len()))
            }
        }
    }
}
