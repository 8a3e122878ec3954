//! The exported `_kmod_info`: a thin layer over the generated [`kmod_info`]
//! (xnu `osfmk/mach/kmod.h`, `#pragma pack(4)`, 196 bytes on LP64).

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_void};

use super::{KMOD_INFO_VERSION, KMOD_MAX_NAME, kern_return_t, kmod_info};

/// The start and stop routines' type, without the `Option` of the generated
/// `kmod_start_func_t`: the record always has both.
pub type KmodEntryFn = unsafe extern "C" fn(*mut kmod_info, *mut c_void) -> kern_return_t;

impl kmod_info {
    /// The record as it sits in the binary, before the loader fills it in: no list
    /// links, id `0xFFFFFFFF`, reference count `-1`, address and sizes 0.
    pub const fn for_binary(
        name: [c_char; KMOD_MAX_NAME],
        version: [c_char; KMOD_MAX_NAME],
        start: KmodEntryFn,
        stop: KmodEntryFn,
    ) -> Self {
        kmod_info {
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
pub struct KmodInfoCell(UnsafeCell<kmod_info>);

// SAFETY: Rust code never reads or writes the cell after start-up; only the kernel
// loader writes it, before `start` runs and after `stop` returns.
unsafe impl Sync for KmodInfoCell {}

impl KmodInfoCell {
    /// Wraps the record.
    pub const fn new(info: kmod_info) -> Self {
        KmodInfoCell(UnsafeCell::new(info))
    }
}
