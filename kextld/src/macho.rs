//! Raw Mach-O constants and structure layouts shared by the kext writer and the
//! verifier, plus small little-endian write helpers.
//!
//! Values are those of Apple's `<mach-o/loader.h>`, `<mach-o/nlist.h>`,
//! `<mach-o/reloc.h>` and `<mach-o/x86_64/reloc.h>` (xnu `EXTERNAL_HEADERS/mach-o/`).
//! Reading goes through the `object` crate; this table exists so that the writer
//! is plain and every number it emits has a name.

// ---- mach_header_64 --------------------------------------------------------

/// `MH_MAGIC_64`: 64-bit Mach-O, in the file's (little-endian) byte order.
pub const MH_MAGIC_64: u32 = 0xfeed_facf;
/// `MH_MAGIC`: 32-bit Mach-O (not accepted as input).
pub const MH_MAGIC: u32 = 0xfeed_face;
/// Size of `mach_header_64`.
pub const MACH_HEADER_64_SIZE: usize = 32;

/// `CPU_TYPE_X86_64` (`CPU_TYPE_X86 | CPU_ARCH_ABI64`).
pub const CPU_TYPE_X86_64: u32 = 0x0100_0007;
/// `CPU_TYPE_ARM64`.
pub const CPU_TYPE_ARM64: u32 = 0x0100_000c;
/// arm64e kexts: `CPU_SUBTYPE_ARM64E` (2) | `CPU_SUBTYPE_PTRAUTH_ABI` (0x8000_0000) |
/// kernel ABI (0x4000_0000), ptrauth ABI version 0. LLVM's objects carry 0x8000_0002
/// or plain 2; the linker sets this value.
pub const CPU_SUBTYPE_ARM64E_KERNEL: u32 = 0xc000_0002;
/// `CPU_SUBTYPE_X86_64_ALL`: the subtype shipped x86_64 kexts carry.
pub const CPU_SUBTYPE_X86_64_ALL: u32 = 3;

/// `MH_OBJECT`: relocatable object file (the only accepted input filetype).
pub const MH_OBJECT: u32 = 0x1;
/// `MH_KEXT_BUNDLE`: kernel extension bundle binary (the output filetype).
pub const MH_KEXT_BUNDLE: u32 = 0xb;

/// `MH_NOUNDEFS`.
pub const MH_NOUNDEFS: u32 = 0x1;
/// `MH_DYLDLINK`.
pub const MH_DYLDLINK: u32 = 0x4;
/// `MH_TWOLEVEL`.
pub const MH_TWOLEVEL: u32 = 0x80;
/// Header flags of every shipped kext: `MH_NOUNDEFS | MH_DYLDLINK | MH_TWOLEVEL` = 0x85.
pub const KEXT_HEADER_FLAGS: u32 = MH_NOUNDEFS | MH_DYLDLINK | MH_TWOLEVEL;

// ---- load commands ---------------------------------------------------------

/// `LC_SEGMENT_64`.
pub const LC_SEGMENT_64: u32 = 0x19;
/// `LC_SYMTAB`.
pub const LC_SYMTAB: u32 = 0x2;
/// `LC_DYSYMTAB`.
pub const LC_DYSYMTAB: u32 = 0xb;
/// `LC_UUID`.
pub const LC_UUID: u32 = 0x1b;
/// `LC_SOURCE_VERSION`.
pub const LC_SOURCE_VERSION: u32 = 0x2a;
/// `LC_SEGMENT_SPLIT_INFO` (`linkedit_data_command`).
pub const LC_SEGMENT_SPLIT_INFO: u32 = 0x1e;
/// `LC_DYLD_CHAINED_FIXUPS` (`LC_REQ_DYLD | 0x34`, `linkedit_data_command`).
pub const LC_DYLD_CHAINED_FIXUPS: u32 = 0x8000_0034;
/// `LC_CODE_SIGNATURE` (appended by `codesign`, never by the linker).
pub const LC_CODE_SIGNATURE: u32 = 0x1d;

/// Size of `segment_command_64` (without its sections).
pub const SEGMENT_COMMAND_64_SIZE: usize = 72;
/// Size of `section_64`.
pub const SECTION_64_SIZE: usize = 80;
/// Size of `symtab_command`.
pub const SYMTAB_COMMAND_SIZE: usize = 24;
/// Size of `dysymtab_command`.
pub const DYSYMTAB_COMMAND_SIZE: usize = 80;
/// Size of `uuid_command`.
pub const UUID_COMMAND_SIZE: usize = 24;
/// Size of `source_version_command`.
pub const SOURCE_VERSION_COMMAND_SIZE: usize = 16;
/// Size of `linkedit_data_command` (e.g. `LC_CODE_SIGNATURE`): the header padding
/// the linker must leave free after its load commands.
pub const LINKEDIT_DATA_COMMAND_SIZE: usize = 16;
/// Header padding left after the load commands (ld64 leaves at least this much).
pub const MIN_HEADER_PADDING: usize = 32;

/// `VM_PROT_READ`.
pub const VM_PROT_READ: u32 = 0x1;
/// `VM_PROT_WRITE`.
pub const VM_PROT_WRITE: u32 = 0x2;
/// `VM_PROT_EXECUTE`.
pub const VM_PROT_EXECUTE: u32 = 0x4;

// ---- sections --------------------------------------------------------------

/// `SECTION_TYPE`: mask of the type byte in `section_64.flags`.
pub const SECTION_TYPE: u32 = 0x0000_00ff;
/// `SECTION_ATTRIBUTES`: mask of the attribute bits.
pub const SECTION_ATTRIBUTES: u32 = 0xffff_ff00;
/// `S_REGULAR`.
pub const S_REGULAR: u32 = 0x0;
/// `S_ZEROFILL`.
pub const S_ZEROFILL: u32 = 0x1;
/// `S_CSTRING_LITERALS`.
pub const S_CSTRING_LITERALS: u32 = 0x2;
/// `S_4BYTE_LITERALS`.
pub const S_4BYTE_LITERALS: u32 = 0x3;
/// `S_8BYTE_LITERALS`.
pub const S_8BYTE_LITERALS: u32 = 0x4;
/// `S_LITERAL_POINTERS`.
pub const S_LITERAL_POINTERS: u32 = 0x5;
/// `S_NON_LAZY_SYMBOL_POINTERS`.
pub const S_NON_LAZY_SYMBOL_POINTERS: u32 = 0x6;
/// `S_LAZY_SYMBOL_POINTERS`.
pub const S_LAZY_SYMBOL_POINTERS: u32 = 0x7;
/// `S_SYMBOL_STUBS`.
pub const S_SYMBOL_STUBS: u32 = 0x8;
/// `S_MOD_INIT_FUNC_POINTERS`.
pub const S_MOD_INIT_FUNC_POINTERS: u32 = 0x9;
/// `S_MOD_TERM_FUNC_POINTERS`.
pub const S_MOD_TERM_FUNC_POINTERS: u32 = 0xa;
/// `S_COALESCED`.
pub const S_COALESCED: u32 = 0xb;
/// `S_GB_ZEROFILL`.
pub const S_GB_ZEROFILL: u32 = 0xc;
/// `S_INTERPOSING`.
pub const S_INTERPOSING: u32 = 0xd;
/// `S_16BYTE_LITERALS`.
pub const S_16BYTE_LITERALS: u32 = 0xe;
/// `S_DTRACE_DOF`.
pub const S_DTRACE_DOF: u32 = 0xf;
/// `S_LAZY_DYLIB_SYMBOL_POINTERS`.
pub const S_LAZY_DYLIB_SYMBOL_POINTERS: u32 = 0x10;
/// `S_THREAD_LOCAL_REGULAR`.
pub const S_THREAD_LOCAL_REGULAR: u32 = 0x11;
/// `S_THREAD_LOCAL_ZEROFILL`.
pub const S_THREAD_LOCAL_ZEROFILL: u32 = 0x12;
/// `S_THREAD_LOCAL_VARIABLES`.
pub const S_THREAD_LOCAL_VARIABLES: u32 = 0x13;
/// `S_THREAD_LOCAL_VARIABLE_POINTERS`.
pub const S_THREAD_LOCAL_VARIABLE_POINTERS: u32 = 0x14;
/// `S_THREAD_LOCAL_INIT_FUNCTION_POINTERS`.
pub const S_THREAD_LOCAL_INIT_FUNCTION_POINTERS: u32 = 0x15;
/// `S_ATTR_PURE_INSTRUCTIONS`.
pub const S_ATTR_PURE_INSTRUCTIONS: u32 = 0x8000_0000;
/// `S_ATTR_DEBUG`: DWARF and similar; never loaded.
pub const S_ATTR_DEBUG: u32 = 0x0200_0000;
/// `S_ATTR_SOME_INSTRUCTIONS`.
pub const S_ATTR_SOME_INSTRUCTIONS: u32 = 0x0000_0400;
/// `S_ATTR_EXT_RELOC`.
pub const S_ATTR_EXT_RELOC: u32 = 0x0000_0200;
/// `S_ATTR_LOC_RELOC`.
pub const S_ATTR_LOC_RELOC: u32 = 0x0000_0100;

// ---- nlist_64 --------------------------------------------------------------

/// Size of `nlist_64`.
pub const NLIST_64_SIZE: usize = 16;
/// `N_STAB`: mask of debugger (stab) entries.
pub const N_STAB: u8 = 0xe0;
/// `N_PEXT`: private external (visible to the static link only).
pub const N_PEXT: u8 = 0x10;
/// `N_TYPE`: mask of the type bits.
pub const N_TYPE: u8 = 0x0e;
/// `N_EXT`: external symbol.
pub const N_EXT: u8 = 0x01;
/// `N_UNDF`: undefined (`n_sect == NO_SECT`).
pub const N_UNDF: u8 = 0x0;
/// `N_ABS`: absolute.
pub const N_ABS: u8 = 0x2;
/// `N_SECT`: defined in section `n_sect`.
pub const N_SECT: u8 = 0xe;
/// `N_PBUD`: prebound undefined.
pub const N_PBUD: u8 = 0xc;
/// `N_INDR`: indirect.
pub const N_INDR: u8 = 0xa;
/// `NO_SECT`.
pub const NO_SECT: u8 = 0;
/// `N_WEAK_REF` (n_desc): weak reference.
pub const N_WEAK_REF: u16 = 0x0040;
/// `N_WEAK_DEF` (n_desc): weak definition.
pub const N_WEAK_DEF: u16 = 0x0080;
/// `DYNAMIC_LOOKUP_ORDINAL << 8` (n_desc of a kext's undefined symbols): flat lookup.
pub const N_DESC_DYNAMIC_LOOKUP: u16 = 0xfe00;

// ---- relocation_info -------------------------------------------------------

/// Size of `relocation_info`.
pub const RELOCATION_INFO_SIZE: usize = 8;
/// `X86_64_RELOC_UNSIGNED`: absolute address.
pub const X86_64_RELOC_UNSIGNED: u8 = 0;
/// `X86_64_RELOC_SIGNED`: RIP-relative 32-bit displacement.
pub const X86_64_RELOC_SIGNED: u8 = 1;
/// `X86_64_RELOC_BRANCH`: `call`/`jmp` rel32.
pub const X86_64_RELOC_BRANCH: u8 = 2;
/// `X86_64_RELOC_GOT_LOAD`: `movq sym@GOTPCREL(%rip), %reg`.
pub const X86_64_RELOC_GOT_LOAD: u8 = 3;
/// `X86_64_RELOC_GOT`: other GOT references.
pub const X86_64_RELOC_GOT: u8 = 4;
/// `X86_64_RELOC_SUBTRACTOR`: must be followed by `X86_64_RELOC_UNSIGNED`.
pub const X86_64_RELOC_SUBTRACTOR: u8 = 5;
/// `X86_64_RELOC_SIGNED_1`: RIP-relative with a 1-byte immediate after the displacement.
pub const X86_64_RELOC_SIGNED_1: u8 = 6;
/// `X86_64_RELOC_SIGNED_2`: RIP-relative with a 2-byte immediate after the displacement.
pub const X86_64_RELOC_SIGNED_2: u8 = 7;
/// `X86_64_RELOC_SIGNED_4`: RIP-relative with a 4-byte immediate after the displacement.
pub const X86_64_RELOC_SIGNED_4: u8 = 8;
/// `X86_64_RELOC_TLV`: thread-local variable access.
pub const X86_64_RELOC_TLV: u8 = 9;

/// `ARM64_RELOC_UNSIGNED`: absolute address (64-bit pointer).
pub const ARM64_RELOC_UNSIGNED: u8 = 0;
/// `ARM64_RELOC_SUBTRACTOR`: must be followed by `ARM64_RELOC_UNSIGNED`.
pub const ARM64_RELOC_SUBTRACTOR: u8 = 1;
/// `ARM64_RELOC_BRANCH26`: `b`/`bl` imm26.
pub const ARM64_RELOC_BRANCH26: u8 = 2;
/// `ARM64_RELOC_PAGE21`: `adrp` of the target's page.
pub const ARM64_RELOC_PAGE21: u8 = 3;
/// `ARM64_RELOC_PAGEOFF12`: `add`/`ldr`/`str` of the offset in the page.
pub const ARM64_RELOC_PAGEOFF12: u8 = 4;
/// `ARM64_RELOC_GOT_LOAD_PAGE21`: `adrp` of the target's GOT slot page.
pub const ARM64_RELOC_GOT_LOAD_PAGE21: u8 = 5;
/// `ARM64_RELOC_GOT_LOAD_PAGEOFF12`: `ldr` of the target's GOT slot.
pub const ARM64_RELOC_GOT_LOAD_PAGEOFF12: u8 = 6;
/// `ARM64_RELOC_POINTER_TO_GOT`: pointer (or pc-relative delta) to a GOT slot.
pub const ARM64_RELOC_POINTER_TO_GOT: u8 = 7;
/// `ARM64_RELOC_TLVP_LOAD_PAGE21`: thread-local variable.
pub const ARM64_RELOC_TLVP_LOAD_PAGE21: u8 = 8;
/// `ARM64_RELOC_TLVP_LOAD_PAGEOFF12`: thread-local variable.
pub const ARM64_RELOC_TLVP_LOAD_PAGEOFF12: u8 = 9;
/// `ARM64_RELOC_ADDEND`: `r_symbolnum` is the addend of the next relocation.
pub const ARM64_RELOC_ADDEND: u8 = 10;
/// `ARM64_RELOC_AUTHENTICATED_POINTER`: signed 64-bit pointer; the slot holds
/// addend (bits 0–31), diversity (32–47), address diversity (48), key (49–50), 1 (63).
pub const ARM64_RELOC_AUTHENTICATED_POINTER: u8 = 11;

/// The name of an ARM64 relocation type, as in `<mach-o/arm64/reloc.h>`.
pub fn arm64_reloc_name(r_type: u8) -> &'static str {
    match r_type {
        ARM64_RELOC_UNSIGNED => "ARM64_RELOC_UNSIGNED",
        ARM64_RELOC_SUBTRACTOR => "ARM64_RELOC_SUBTRACTOR",
        ARM64_RELOC_BRANCH26 => "ARM64_RELOC_BRANCH26",
        ARM64_RELOC_PAGE21 => "ARM64_RELOC_PAGE21",
        ARM64_RELOC_PAGEOFF12 => "ARM64_RELOC_PAGEOFF12",
        ARM64_RELOC_GOT_LOAD_PAGE21 => "ARM64_RELOC_GOT_LOAD_PAGE21",
        ARM64_RELOC_GOT_LOAD_PAGEOFF12 => "ARM64_RELOC_GOT_LOAD_PAGEOFF12",
        ARM64_RELOC_POINTER_TO_GOT => "ARM64_RELOC_POINTER_TO_GOT",
        ARM64_RELOC_TLVP_LOAD_PAGE21 => "ARM64_RELOC_TLVP_LOAD_PAGE21",
        ARM64_RELOC_TLVP_LOAD_PAGEOFF12 => "ARM64_RELOC_TLVP_LOAD_PAGEOFF12",
        ARM64_RELOC_ADDEND => "ARM64_RELOC_ADDEND",
        ARM64_RELOC_AUTHENTICATED_POINTER => "ARM64_RELOC_AUTHENTICATED_POINTER",
        _ => "unknown ARM64 relocation type",
    }
}

/// `INDIRECT_SYMBOL_LOCAL`: an indirect entry for a slot that holds a local address.
pub const INDIRECT_SYMBOL_LOCAL: u32 = 0x8000_0000;

/// The name of an x86_64 relocation type, as in `<mach-o/x86_64/reloc.h>`.
pub fn x86_64_reloc_name(r_type: u8) -> &'static str {
    match r_type {
        X86_64_RELOC_UNSIGNED => "X86_64_RELOC_UNSIGNED",
        X86_64_RELOC_SIGNED => "X86_64_RELOC_SIGNED",
        X86_64_RELOC_BRANCH => "X86_64_RELOC_BRANCH",
        X86_64_RELOC_GOT_LOAD => "X86_64_RELOC_GOT_LOAD",
        X86_64_RELOC_GOT => "X86_64_RELOC_GOT",
        X86_64_RELOC_SUBTRACTOR => "X86_64_RELOC_SUBTRACTOR",
        X86_64_RELOC_SIGNED_1 => "X86_64_RELOC_SIGNED_1",
        X86_64_RELOC_SIGNED_2 => "X86_64_RELOC_SIGNED_2",
        X86_64_RELOC_SIGNED_4 => "X86_64_RELOC_SIGNED_4",
        X86_64_RELOC_TLV => "X86_64_RELOC_TLV",
        _ => "unknown x86_64 relocation type",
    }
}

/// Packs a `relocation_info` (non-scattered) into its two little-endian words.
pub fn relocation_info(
    r_address: u32,
    r_symbolnum: u32,
    r_pcrel: bool,
    r_length: u8,
    r_extern: bool,
    r_type: u8,
) -> [u8; RELOCATION_INFO_SIZE] {
    debug_assert!(r_symbolnum < (1 << 24) && r_length < 4 && r_type < 16);
    let word1 = (r_symbolnum & 0x00ff_ffff)
        | (u32::from(r_pcrel) << 24)
        | (u32::from(r_length & 3) << 25)
        | (u32::from(r_extern) << 27)
        | (u32::from(r_type & 0xf) << 28);
    let mut out = [0; RELOCATION_INFO_SIZE];
    out[..4].copy_from_slice(&r_address.to_le_bytes());
    out[4..].copy_from_slice(&word1.to_le_bytes());
    out
}

// ---- little-endian write helpers ---------------------------------------------

/// Appends a little-endian `u32`.
pub fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a 16-byte, NUL-padded Mach-O name (`segname`/`sectname`).
///
/// Panics if `name` is longer than 16 bytes (names come from inputs, which the
/// reader already limited to 16 bytes, or from this crate's constants).
pub fn push_name16(out: &mut Vec<u8>, name: &str) {
    assert!(
        name.len() <= 16,
        "Mach-O name {name:?} longer than 16 bytes"
    );
    let mut buf = [0u8; 16];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    out.extend_from_slice(&buf);
}

/// Overwrites a little-endian `u32` at `off`.
pub fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Overwrites a little-endian `u64` at `off`.
pub fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Reads a little-endian `u32` at `off`.
pub fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

/// Reads a little-endian `u64` at `off`.
pub fn get_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_info_packs_like_reloc_h() {
        // extern BRANCH, pcrel, length 2, symbol 5 at 0x1234.
        let r = relocation_info(0x1234, 5, true, 2, true, X86_64_RELOC_BRANCH);
        assert_eq!(get_u32(&r, 0), 0x1234);
        assert_eq!(get_u32(&r, 4), 5 | 1 << 24 | 2 << 25 | 1 << 27 | 2 << 28);
        // local UNSIGNED, length 3, section 3.
        let r = relocation_info(8, 3, false, 3, false, X86_64_RELOC_UNSIGNED);
        assert_eq!(get_u32(&r, 4), 0x0600_0003);
    }

    #[test]
    fn header_flags() {
        assert_eq!(KEXT_HEADER_FLAGS, 0x85);
    }
}
