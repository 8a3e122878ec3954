//! `kmod_info_t` (xnu `osfmk/mach/kmod.h`), declared under `#pragma pack(4)`:
//! 196 bytes on LP64, with the function pointers at offsets 180 and 188.

use core::cell::UnsafeCell;
use core::ffi::c_void;

use super::KernReturn;

/// `kmod_start_func_t`: `kern_return_t (*)(kmod_info_t *ki, void *data)`.
pub type KmodStartFn = unsafe extern "C" fn(*mut KmodInfo, *mut c_void) -> KernReturn;
/// `kmod_stop_func_t`: same signature as the start routine.
pub type KmodStopFn = unsafe extern "C" fn(*mut KmodInfo, *mut c_void) -> KernReturn;

/// Length of the `name` and `version` fields (`KMOD_MAX_NAME`).
pub const KMOD_MAX_NAME: usize = 64;
/// `KMOD_INFO_VERSION`.
pub const KMOD_INFO_VERSION: i32 = 1;

/// `kmod_info_t`, field for field.
#[repr(C, packed(4))]
pub struct KmodInfo {
    /// `next`: loader-owned list link.
    pub next: *mut KmodInfo,
    /// `info_version`: always [`KMOD_INFO_VERSION`].
    pub info_version: i32,
    /// `id`: assigned by the loader; `0xFFFFFFFF` in the binary.
    pub id: u32,
    /// `name`: the bundle identifier, NUL-padded.
    pub name: [u8; KMOD_MAX_NAME],
    /// `version`: the bundle version, NUL-padded.
    pub version: [u8; KMOD_MAX_NAME],
    /// `reference_count`: `-1` in the binary.
    pub reference_count: i32,
    /// `reference_list`: loader-owned.
    pub reference_list: *mut c_void,
    /// `address`: load address, filled by the loader.
    pub address: u64,
    /// `size`: mapped size, filled by the loader.
    pub size: u64,
    /// `hdr_size`: header size, filled by the loader.
    pub hdr_size: u64,
    /// `start`: the kext's start routine.
    pub start: Option<KmodStartFn>,
    /// `stop`: the kext's stop routine.
    pub stop: Option<KmodStopFn>,
}

const _: () = {
    assert!(core::mem::size_of::<KmodInfo>() == 196);
    assert!(core::mem::offset_of!(KmodInfo, info_version) == 8);
    assert!(core::mem::offset_of!(KmodInfo, name) == 16);
    assert!(core::mem::offset_of!(KmodInfo, version) == 80);
    assert!(core::mem::offset_of!(KmodInfo, reference_count) == 144);
    assert!(core::mem::offset_of!(KmodInfo, address) == 156);
    assert!(core::mem::offset_of!(KmodInfo, hdr_size) == 172);
    assert!(core::mem::offset_of!(KmodInfo, start) == 180);
    assert!(core::mem::offset_of!(KmodInfo, stop) == 188);
};

impl KmodInfo {
    /// The record as it sits in the binary, before the loader fills it in.
    pub const fn new(
        name: [u8; KMOD_MAX_NAME],
        version: [u8; KMOD_MAX_NAME],
        start: KmodStartFn,
        stop: KmodStopFn,
    ) -> Self {
        KmodInfo {
            next: core::ptr::null_mut(),
            info_version: KMOD_INFO_VERSION,
            id: u32::MAX,
            name,
            version,
            reference_count: -1,
            reference_list: core::ptr::null_mut(),
            address: 0,
            size: 0,
            hdr_size: 0,
            start: Some(start),
            stop: Some(stop),
        }
    }
}

/// The exported `_kmod_info` object. The loader writes into it (address, size,
/// id, list links), so it lives in writable `__DATA,__data`; the `UnsafeCell`
/// makes that explicit to the compiler, which must not treat it as constant.
#[repr(transparent)]
pub struct KmodInfoCell(UnsafeCell<KmodInfo>);

// SAFETY: Rust code never reads or writes the cell after start-up; only the kernel
// loader writes it, before `start` runs and after `stop` returns.
unsafe impl Sync for KmodInfoCell {}

impl KmodInfoCell {
    /// Wraps the record.
    pub const fn new(info: KmodInfo) -> Self {
        KmodInfoCell(UnsafeCell::new(info))
    }
}
