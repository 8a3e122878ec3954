//! Mapping a kext image into this process and running its kmod entry points.
//!
//! One anonymous mapping holds the image (segments copied at their vmaddr
//! offsets) followed by the jump-stub area, so every stub is within ±2 GiB of
//! every `call rel32` in the image whatever the host's address layout. The steps
//! are the kernel's: map read-write, copy, relocate (kxld's rules, see
//! [`super::reloc`]), fill in `kmod_info`, then give each segment its `initprot`
//! (`__TEXT` r-x) and run the static initialisers and `start`.
//!
//! Unloading makes the whole mapping inaccessible (but keeps it reserved), so a
//! stale pointer into an unloaded kext faults at a recognisable address instead
//! of running whatever the host maps there next.
//!
//! This module and [`super::abi`] are the only places that execute kext code or
//! touch raw memory.

use std::ffi::c_void;

use super::arch;
use super::image::{self, KextImage};
use super::reloc::{self, Binding};

const PAGE: u64 = 4096;
const STUB_SIZE: u64 = 16;
/// `kmod_info_t` field offsets (pack(4), see `osfmk/mach/kmod.h`).
pub mod kmod_info {
    pub const INFO_VERSION: usize = 8;
    pub const ID: usize = 12;
    pub const NAME: usize = 16;
    pub const VERSION: usize = 80;
    pub const REFERENCE_COUNT: usize = 144;
    pub const ADDRESS: usize = 156;
    pub const SIZE: usize = 164;
    pub const START: usize = 180;
    pub const STOP: usize = 188;
    pub const LEN: usize = 196;
}

/// Why a kext could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Reloc(#[from] reloc::RelocError),
    #[error("mmap of {size} bytes failed: {err}")]
    Map { size: u64, err: std::io::Error },
    #[error("mprotect failed: {0}")]
    Protect(std::io::Error),
    #[error("no _kmod_info symbol: not a kext (the kernel looks it up by name)")]
    NoKmodInfo,
    #[error("_kmod_info at {0:#x} is not inside the image's data")]
    KmodInfoOutside(u64),
    #[error("kmod_info.info_version is {0}, the kernel requires 1 (KMOD_INFO_VERSION)")]
    InfoVersion(i32),
    #[error("kmod_info.{field} is {addr:#x}, which is not in the kext's code")]
    EntryOutsideCode { field: &'static str, addr: u64 },
    #[error("arm64e chained fixups: {0}")]
    Chained(String),
}

/// A kext mapped in this process.
pub struct LoadedKext {
    pub image: KextImage,
    pub name: String,
    pub version: String,
    pub base: u64,
    /// Bytes of the image part of the mapping (page-rounded).
    pub size: u64,
    pub stubs: u64,
    pub stubs_len: u64,
    /// Symbol of each stub, in stub order.
    pub stub_symbols: Vec<String>,
    pub kmod_info: u64,
    pub start: u64,
    pub stop: u64,
    mapping_len: u64,
    unloaded: bool,
}

fn round_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

fn cstr_field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Maps `image`, binds its undefined symbols with `host` (name → host address),
/// applies the relocations and fills in `kmod_info` (`load_tag` as its id). The
/// code is executable afterwards but nothing has run yet.
pub fn load(
    image: KextImage,
    host: &dyn Fn(&str) -> Option<u64>,
    load_tag: i32,
) -> Result<LoadedKext, LoadError> {
    let size = round_up(image.vm_size.max(PAGE));
    let undefined = image.undefined();
    let bound: Vec<(String, u64)> = undefined
        .iter()
        .filter_map(|n| host(n).map(|a| (n.clone(), a)))
        .collect();
    let stubs_len = round_up((bound.len() as u64 * STUB_SIZE).max(1));
    let mapping_len = size + stubs_len;

    // SAFETY: an anonymous private mapping at an address of the kernel's choosing;
    // it aliases nothing, and we check the result before using it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mapping_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(LoadError::Map {
            size: mapping_len,
            err: std::io::Error::last_os_error(),
        });
    }
    let base_addr = base as u64;
    let mut kext = LoadedKext {
        image,
        name: String::new(),
        version: String::new(),
        base: base_addr,
        size,
        stubs: base_addr + size,
        stubs_len,
        stub_symbols: bound.iter().map(|(n, _)| n.clone()).collect(),
        kmod_info: 0,
        start: 0,
        stop: 0,
        mapping_len,
        unloaded: false,
    };
    // From here on, `kext`'s Drop unmaps on error.

    // SAFETY: `base` is a fresh read-write mapping of `mapping_len` bytes that only
    // this function references until it returns.
    let mem: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(base as *mut u8, mapping_len as usize) };
    let (img_mem, stub_mem) = mem.split_at_mut(size as usize);

    for seg in &kext.image.segments {
        let from = &kext.image.bytes[seg.fileoff as usize..(seg.fileoff + seg.filesize) as usize];
        img_mem[seg.vmaddr as usize..seg.vmaddr as usize + from.len()].copy_from_slice(from);
    }

    if kext.image.cputype == image::CPU_TYPE_ARM64 {
        // arm64e: every rebase and bind is a chained fixup; calls to the KPIs go
        // through `__auth_got` slots (no jump stubs needed).
        let missing: Vec<String> = undefined
            .iter()
            .filter(|n| !bound.iter().any(|(b, _)| b == *n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(reloc::RelocError::Unbound(missing).into());
        }
        apply_chained(&kext.image, img_mem, base_addr, &bound)?;
    } else {
        bind_x86_64(&kext, img_mem, stub_mem, base_addr, &bound)?;
    }

    // kmod_info, as OSKext::load fills it in before calling start.
    let ki = kext
        .image
        .defined("_kmod_info")
        .ok_or(LoadError::NoKmodInfo)?
        .n_value;
    let ki_end = ki + kmod_info::LEN as u64;
    let ok = kext
        .image
        .segment_at(ki)
        .is_some_and(|s| ki_end <= s.vmaddr + s.filesize.max(s.vmsize));
    if !ok || ki_end > size {
        return Err(LoadError::KmodInfoOutside(ki));
    }
    let k = &mut img_mem[ki as usize..ki_end as usize];
    let rd32 = |b: &[u8], o: usize| i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let rd64 = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let version = rd32(k, kmod_info::INFO_VERSION);
    if version != 1 {
        return Err(LoadError::InfoVersion(version));
    }
    kext.name = cstr_field(&k[kmod_info::NAME..kmod_info::NAME + 64]);
    kext.version = cstr_field(&k[kmod_info::VERSION..kmod_info::VERSION + 64]);
    kext.start = rd64(k, kmod_info::START);
    kext.stop = rd64(k, kmod_info::STOP);
    k[kmod_info::ID..kmod_info::ID + 4].copy_from_slice(&load_tag.to_le_bytes());
    k[kmod_info::REFERENCE_COUNT..kmod_info::REFERENCE_COUNT + 4]
        .copy_from_slice(&0i32.to_le_bytes());
    k[kmod_info::ADDRESS..kmod_info::ADDRESS + 8].copy_from_slice(&base_addr.to_le_bytes());
    k[kmod_info::SIZE..kmod_info::SIZE + 8].copy_from_slice(&size.to_le_bytes());
    kext.kmod_info = base_addr + ki;
    for (field, addr) in [("start", kext.start), ("stop", kext.stop)] {
        if addr != 0 && !kext.contains_code(arch::strip(addr)) {
            return Err(LoadError::EntryOutsideCode { field, addr });
        }
    }

    // Segment protections, then the stubs read+execute.
    for seg in &kext.image.segments {
        let prot = prot_of(seg.initprot);
        let start = base_addr + seg.vmaddr;
        let len = round_up(seg.vmsize);
        if len == 0 {
            continue;
        }
        protect(start, len, prot)?;
    }
    protect(kext.stubs, stubs_len, libc::PROT_READ | libc::PROT_EXEC)?;
    Ok(kext)
}

/// x86_64: jump stubs for the bound symbols, then kxld's relocation rules.
fn bind_x86_64(
    kext: &LoadedKext,
    img_mem: &mut [u8],
    stub_mem: &mut [u8],
    base_addr: u64,
    bound: &[(String, u64)],
) -> Result<(), LoadError> {
    // Stubs: `jmp qword ptr [rip+0]` followed by the 8-byte host address.
    let mut bindings = std::collections::HashMap::new();
    for (i, (name, addr)) in bound.iter().enumerate() {
        let off = i * STUB_SIZE as usize;
        let stub = &mut stub_mem[off..off + STUB_SIZE as usize];
        stub[..6].copy_from_slice(&[0xFF, 0x25, 0, 0, 0, 0]);
        stub[6..14].copy_from_slice(&addr.to_le_bytes());
        stub[14..16].copy_from_slice(&[0xCC, 0xCC]);
        bindings.insert(
            name.clone(),
            Binding {
                absolute: *addr,
                branch: kext.stubs + off as u64,
            },
        );
    }
    reloc::apply(&kext.image, img_mem, base_addr, &|n| {
        bindings.get(n).copied()
    })?;
    Ok(())
}

/// arm64e: applies the chained fixups as the kernel-collection builder does —
/// rebases to the mapped address, binds to the emulator's KPI entry points, each
/// authenticated one signed with its key and discriminator (blended with the
/// slot's address when address-diversified).
fn apply_chained(
    image: &KextImage,
    mem: &mut [u8],
    base: u64,
    bound: &[(String, u64)],
) -> Result<(), LoadError> {
    let (off, len) = image.chained_fixups.ok_or_else(|| {
        LoadError::Chained("the arm64e slice has no LC_DYLD_CHAINED_FIXUPS".into())
    })?;
    let blob = image
        .bytes
        .get(off as usize..off as usize + len as usize)
        .ok_or_else(|| LoadError::Chained(format!("blob at {off:#x}+{len:#x} past the end")))?;
    let fixups = arch::chained::decode(blob, mem).map_err(LoadError::Chained)?;
    for f in fixups {
        let value = match &f.target {
            arch::chained::Target::Rebase { offset, high8 } => {
                (base + offset) | (u64::from(*high8) << 56)
            }
            arch::chained::Target::Bind { symbol, addend } => {
                let a = bound
                    .iter()
                    .find(|(n, _)| n == symbol)
                    .map(|(_, a)| *a)
                    .ok_or_else(|| reloc::RelocError::Unbound(vec![symbol.clone()]))?;
                a.wrapping_add_signed(*addend)
            }
        };
        let slot = base + f.slot;
        let value = match f.auth {
            None => value,
            Some(a) => arch::sign(value, a.key, a.discriminator_at(slot)).ok_or_else(|| {
                LoadError::Chained(format!(
                    "slot {:#x} is signed (key {}): pointer authentication needs the aarch64 emulator",
                    f.slot,
                    a.key_name()
                ))
            })?,
        };
        mem[f.slot as usize..f.slot as usize + 8].copy_from_slice(&value.to_le_bytes());
    }
    Ok(())
}

fn prot_of(initprot: u32) -> libc::c_int {
    let mut p = 0;
    if initprot & 1 != 0 {
        p |= libc::PROT_READ;
    }
    if initprot & 2 != 0 {
        p |= libc::PROT_WRITE;
    }
    if initprot & 4 != 0 {
        p |= libc::PROT_EXEC;
    }
    p
}

fn protect(addr: u64, len: u64, prot: libc::c_int) -> Result<(), LoadError> {
    // SAFETY: `addr..addr+len` lies inside a mapping this module created and still
    // owns (callers pass page-aligned ranges of it); changing its protection
    // cannot invalidate Rust references because none are held across this call.
    let r = unsafe { libc::mprotect(addr as *mut c_void, len as usize, prot) };
    if r != 0 {
        return Err(LoadError::Protect(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl LoadedKext {
    /// How the KPIs were bound, for the load step's report.
    pub fn binding_kind(&self) -> &'static str {
        if self.image.cputype == image::CPU_TYPE_ARM64 {
            "through chained fixups (authenticated ones PAC-signed)"
        } else {
            "through stubs"
        }
    }

    /// Whether slid address `addr` is in one of the kext's executable segments.
    pub fn contains_code(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + self.size && self.image.is_code(addr - self.base)
    }

    /// Executable ranges `[start, end)` (slid).
    pub fn code_ranges(&self) -> Vec<(u64, u64)> {
        self.image
            .segments
            .iter()
            .filter(|s| s.initprot & 4 != 0)
            .map(|s| (self.base + s.vmaddr, self.base + s.vmaddr + s.vmsize))
            .collect()
    }

    /// Pointers in `__DATA,__mod_init_func` / `__mod_term_func` (already slid).
    pub fn initialisers(&self, sect: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for s in self.image.sections.iter().filter(|s| s.sectname == sect) {
            for i in 0..s.size / 8 {
                let at = self.base + s.addr + i * 8;
                // SAFETY: the section lies inside the mapped image (checked when the
                // image was parsed) and its segment is readable after `load`.
                out.push(unsafe { std::ptr::read_unaligned(at as *const u64) });
            }
        }
        out
    }

    /// Calls a kmod entry point (`start`/`stop`): `kern_return_t (*)(kmod_info_t *, void *)`.
    pub fn call_entry(&self, addr: u64) -> i32 {
        assert!(
            self.contains_code(arch::strip(addr)) && !self.unloaded,
            "entry point outside the loaded kext's code"
        );
        arch::set_current_call("kmod_info start/stop");
        // SAFETY: `addr` is inside the kext's executable segment (asserted), the
        // image is relocated and bound, and kmod entry points have this C
        // signature (the SysV ABI matches macOS x86_64 for these arguments; on
        // arm64e the call is `blraa` with the type's discriminator, as xnu's).
        // What the kext code does is its own: faults end the child process, which
        // is why scenarios run in one.
        let r = unsafe { arch::call_kmod_entry(addr, self.kmod_info) };
        arch::clear_current_call();
        r
    }

    /// Calls a static initialiser/terminator: `void (*)(void)`.
    pub fn call_void(&self, addr: u64) {
        assert!(
            self.contains_code(addr) && !self.unloaded,
            "initialiser outside the loaded kext's code"
        );
        // SAFETY: as in `call_entry`; `__mod_init_func` entries take no arguments.
        unsafe {
            let f: extern "C" fn() = std::mem::transmute(addr as usize);
            f()
        }
    }

    /// Makes the image and stubs inaccessible; later calls into it fault.
    pub fn unload(&mut self) -> Result<(), LoadError> {
        self.unloaded = true;
        protect(self.base, self.mapping_len, libc::PROT_NONE)
    }

    /// Maps a slid address to `symbol+offset` in the kext, or names the stub.
    pub fn describe(&self, addr: u64) -> Option<String> {
        describe(
            &self.image,
            self.base,
            self.size,
            self.stubs,
            &self.stub_symbols,
            addr,
        )
    }
}

/// Maps a slid address to `symbol+offset` in a kext image mapped at `base`, or to
/// the jump stub of a bound symbol.
pub fn describe(
    image: &KextImage,
    base: u64,
    size: u64,
    stubs: u64,
    stub_symbols: &[String],
    addr: u64,
) -> Option<String> {
    if addr >= base && addr < base + size {
        let off = addr - base;
        let seg = image
            .segment_at(off)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| "?".into());
        return Some(match image.symbolize(off) {
            Some((sym, d)) => format!("{sym}+{d:#x} ({seg}, image offset {off:#x})"),
            None => format!("image offset {off:#x} ({seg})"),
        });
    }
    if addr >= stubs && addr < stubs + stub_symbols.len() as u64 * STUB_SIZE {
        let i = ((addr - stubs) / STUB_SIZE) as usize;
        return Some(format!("jump stub for {}", stub_symbols[i]));
    }
    None
}

impl Drop for LoadedKext {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `load` with exactly this base and
        // length and is referenced by nothing else once the kext is dropped.
        unsafe {
            libc::munmap(self.base as *mut c_void, self.mapping_len as usize);
        }
    }
}
