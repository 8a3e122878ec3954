//! Plain Mach-O constants from Apple's `<mach-o/loader.h>`, `<mach-o/nlist.h>`,
//! `<mach-o/reloc.h>`, `<mach-o/x86_64/reloc.h>` and `<mach-o/fat.h>`, as raw
//! integers so they can be compared with the raw fields the verifier reads
//! (the `object` crate wraps them in newtypes).

pub const MH_MAGIC: u32 = 0xfeed_face;
pub const MH_CIGAM: u32 = 0xcefa_edfe;
pub const MH_MAGIC_64: u32 = 0xfeed_facf;
pub const MH_CIGAM_64: u32 = 0xcffa_edfe;
pub const FAT_MAGIC: u32 = 0xcafe_babe;
pub const FAT_MAGIC_64: u32 = 0xcafe_babf;
pub const MH_KEXT_BUNDLE: u32 = 0xb;

pub const CPU_TYPE_X86_64: u32 = 0x0100_0007;
pub const CPU_TYPE_ARM64: u32 = 0x0100_000c;
pub const CPU_SUBTYPE_X86_64_ALL: u32 = 3;

pub const LC_SEGMENT: u32 = 0x1;
pub const LC_SYMTAB: u32 = 0x2;
pub const LC_THREAD: u32 = 0x4;
pub const LC_UNIXTHREAD: u32 = 0x5;
pub const LC_DYSYMTAB: u32 = 0xb;
pub const LC_LOAD_DYLIB: u32 = 0xc;
pub const LC_ID_DYLIB: u32 = 0xd;
pub const LC_LOAD_DYLINKER: u32 = 0xe;
pub const LC_ID_DYLINKER: u32 = 0xf;
pub const LC_ROUTINES_64: u32 = 0x1a;
pub const LC_SEGMENT_64: u32 = 0x19;
pub const LC_UUID: u32 = 0x1b;
pub const LC_RPATH: u32 = 0x8000_001c;
pub const LC_CODE_SIGNATURE: u32 = 0x1d;
pub const LC_SEGMENT_SPLIT_INFO: u32 = 0x1e;
pub const LC_REEXPORT_DYLIB: u32 = 0x8000_001f;
pub const LC_LAZY_LOAD_DYLIB: u32 = 0x20;
pub const LC_DYLD_INFO: u32 = 0x22;
pub const LC_DYLD_INFO_ONLY: u32 = 0x8000_0022;
pub const LC_LOAD_UPWARD_DYLIB: u32 = 0x8000_0023;
pub const LC_LOAD_WEAK_DYLIB: u32 = 0x8000_0018;
pub const LC_VERSION_MIN_MACOSX: u32 = 0x24;
pub const LC_VERSION_MIN_IPHONEOS: u32 = 0x25;
pub const LC_FUNCTION_STARTS: u32 = 0x26;
pub const LC_DYLD_ENVIRONMENT: u32 = 0x27;
pub const LC_MAIN: u32 = 0x8000_0028;
pub const LC_DATA_IN_CODE: u32 = 0x29;
pub const LC_SOURCE_VERSION: u32 = 0x2a;
pub const LC_DYLIB_CODE_SIGN_DRS: u32 = 0x2b;
pub const LC_VERSION_MIN_TVOS: u32 = 0x2f;
pub const LC_VERSION_MIN_WATCHOS: u32 = 0x30;
pub const LC_NOTE: u32 = 0x31;
pub const LC_BUILD_VERSION: u32 = 0x32;
pub const LC_DYLD_CHAINED_FIXUPS: u32 = 0x8000_0034;

pub const VM_PROT_WRITE: u32 = 0x2;
pub const VM_PROT_EXECUTE: u32 = 0x4;

pub const SECTION_TYPE: u32 = 0xff;
pub const S_ZEROFILL: u32 = 0x1;
pub const S_GB_ZEROFILL: u32 = 0xc;
pub const S_THREAD_LOCAL_ZEROFILL: u32 = 0x12;
pub const S_ATTR_PURE_INSTRUCTIONS: u32 = 0x8000_0000;
pub const S_ATTR_SOME_INSTRUCTIONS: u32 = 0x0000_0400;

pub const N_STAB: u8 = 0xe0;
pub const N_TYPE: u8 = 0x0e;
pub const N_EXT: u8 = 0x01;
pub const N_UNDF: u8 = 0x0;
pub const N_SECT: u8 = 0xe;

pub const R_SCATTERED: u32 = 0x8000_0000;
pub const X86_64_RELOC_UNSIGNED: u8 = 0;
pub const X86_64_RELOC_BRANCH: u8 = 2;

/// Names of the load commands above, for messages.
pub const LC_NAMES: &[(u32, &str)] = &[
    (LC_SEGMENT, "LC_SEGMENT"),
    (LC_SYMTAB, "LC_SYMTAB"),
    (LC_THREAD, "LC_THREAD"),
    (LC_UNIXTHREAD, "LC_UNIXTHREAD"),
    (LC_DYSYMTAB, "LC_DYSYMTAB"),
    (LC_LOAD_DYLIB, "LC_LOAD_DYLIB"),
    (LC_ID_DYLIB, "LC_ID_DYLIB"),
    (LC_LOAD_DYLINKER, "LC_LOAD_DYLINKER"),
    (LC_ID_DYLINKER, "LC_ID_DYLINKER"),
    (LC_ROUTINES_64, "LC_ROUTINES_64"),
    (LC_SEGMENT_64, "LC_SEGMENT_64"),
    (LC_UUID, "LC_UUID"),
    (LC_RPATH, "LC_RPATH"),
    (LC_CODE_SIGNATURE, "LC_CODE_SIGNATURE"),
    (LC_SEGMENT_SPLIT_INFO, "LC_SEGMENT_SPLIT_INFO"),
    (LC_REEXPORT_DYLIB, "LC_REEXPORT_DYLIB"),
    (LC_LAZY_LOAD_DYLIB, "LC_LAZY_LOAD_DYLIB"),
    (LC_DYLD_INFO, "LC_DYLD_INFO"),
    (LC_DYLD_INFO_ONLY, "LC_DYLD_INFO_ONLY"),
    (LC_LOAD_UPWARD_DYLIB, "LC_LOAD_UPWARD_DYLIB"),
    (LC_LOAD_WEAK_DYLIB, "LC_LOAD_WEAK_DYLIB"),
    (LC_VERSION_MIN_MACOSX, "LC_VERSION_MIN_MACOSX"),
    (LC_VERSION_MIN_IPHONEOS, "LC_VERSION_MIN_IPHONEOS"),
    (LC_FUNCTION_STARTS, "LC_FUNCTION_STARTS"),
    (LC_DYLD_ENVIRONMENT, "LC_DYLD_ENVIRONMENT"),
    (LC_MAIN, "LC_MAIN"),
    (LC_DATA_IN_CODE, "LC_DATA_IN_CODE"),
    (LC_SOURCE_VERSION, "LC_SOURCE_VERSION"),
    (LC_DYLIB_CODE_SIGN_DRS, "LC_DYLIB_CODE_SIGN_DRS"),
    (LC_VERSION_MIN_TVOS, "LC_VERSION_MIN_TVOS"),
    (LC_VERSION_MIN_WATCHOS, "LC_VERSION_MIN_WATCHOS"),
    (LC_NOTE, "LC_NOTE"),
    (LC_BUILD_VERSION, "LC_BUILD_VERSION"),
    (LC_DYLD_CHAINED_FIXUPS, "LC_DYLD_CHAINED_FIXUPS"),
];
