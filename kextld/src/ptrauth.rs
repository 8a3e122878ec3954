//! Pointer authentication (arm64e) for kexts: the discriminators the kernel
//! expects and the signing schema of each pointer the linker must sign.
//!
//! Glossary:
//! - **key**: one of four signing keys, IA/IB for code pointers, DA/DB for data
//!   pointers ([`Key`]). The kernel signs and authenticates function pointers
//!   with IA.
//! - **discriminator** (also *diversity*): a 16-bit constant mixed into the
//!   signature. Type-discriminated function pointers use a discriminator derived
//!   from the C function type; a pointer signed with one discriminator fails
//!   authentication with another, and the kernel panics.
//! - **address diversity**: the slot's own address is blended into the
//!   discriminator ([`blend`]); the kernel's function pointers in data are *not*
//!   address-diversified, GOT slots of auth stubs are.
//! - **stable hash**: LLVM's `getPointerAuthStableSipHash`: SipHash-2-4 (64-bit
//!   output) of a string under a fixed key, reduced to a non-zero 16-bit value
//!   (`hash % 0xFFFF + 1`). Clang's `__builtin_ptrauth_string_discriminator` and
//!   `__builtin_ptrauth_type_discriminator` both use it; see
//!   [`stable_discriminator`].
//!
//! ## Function-type encoding
//!
//! Clang (`ASTContext::encodeTypeForFunctionPointerAuth`) hashes a function
//! pointer type through a deliberately coarse encoding, so that all C-compatible
//! types get the same discriminator: `F` + return type + parameter types (after
//! array/function-to-pointer decay) + `z` if variadic + `E`. Every integer type,
//! signed or unsigned and of any width, and every enum encodes as `i`; every
//! data pointer (whatever it points to) as `P`; `void` as `v`; `float`/`double`/
//! `long double` as `f`/`d`/`e`; a struct or union passed by value as its name
//! prefixed by the name's length (`7sockaddr`). Typedefs are seen through, and
//! qualifiers ignored. [`function_type_discriminator`] hashes such an encoding.
//!
//! ## The callbacks prx hands to the kernel
//!
//! Each is checked against clang-19's `__builtin_ptrauth_type_discriminator`
//! (test `every_callback_matches_clang`), with the types declared as in xnu's
//! `osfmk/mach/kmod.h`, `bsd/sys/kpi_socketfilter.h`, `bsd/netinet/kpi_ipfilter.h`
//! and `bsd/sys/kern_control.h` (`socket_t`, `mbuf_t`, `sockopt_t`,
//! `ipf_pktopts_t`, `kern_ctl_ref` are pointers; `errno_t`, `kern_return_t`,
//! `sflt_handle`, `sflt_event_t`, `sflt_data_flag_t`, `u_int8_t`, `u_int32_t`,
//! `size_t` are integers). The table is [`CALLBACKS`].
//!
//! | callback | C type | encoding | discriminator |
//! |---|---|---|---|
//! | `kmod_info.start`, `.stop` | `kern_return_t (*)(kmod_info_t *, void *)` | `FiPPE` | `0xE4FE` |
//! | (generic) | `int (*)(void)` | `FiE` | `0xA51F` |
//! | `sflt_filter.sf_unregistered` | `void (*)(sflt_handle)` | `FviE` | `0x0A98` |
//! | `sf_attach` | `errno_t (*)(void **, socket_t)` | `FiPPE` | `0xE4FE` |
//! | `sf_detach` | `void (*)(void *, socket_t)` | `FvPPE` | `0x73D8` |
//! | `sf_notify` | `void (*)(void *, socket_t, sflt_event_t, void *)` | `FvPPiPE` | `0xA0D8` |
//! | `sf_getpeername`, `sf_getsockname` | `int (*)(void *, socket_t, struct sockaddr **)` | `FiPPPE` | `0xBCAD` |
//! | `sf_data_in`, `sf_data_out` | `errno_t (*)(void *, socket_t, const struct sockaddr *, mbuf_t *, mbuf_t *, sflt_data_flag_t)` | `FiPPPPPiE` | `0x0F74` |
//! | `sf_connect_in`, `sf_connect_out`, `sf_bind` | `errno_t (*)(void *, socket_t, const struct sockaddr *)` | `FiPPPE` | `0xBCAD` |
//! | `sf_setoption`, `sf_getoption` | `errno_t (*)(void *, socket_t, sockopt_t)` | `FiPPPE` | `0xBCAD` |
//! | `sf_listen` | `errno_t (*)(void *, socket_t)` | `FiPPE` | `0xE4FE` |
//! | `sf_ioctl` | `errno_t (*)(void *, socket_t, unsigned long, const char *)` | `FiPPiPE` | `0x0E2E` |
//! | `sf_accept` (`sf_ext`) | `errno_t (*)(void *, socket_t, socket_t, const struct sockaddr *, const struct sockaddr *)` | `FiPPPPPE` | `0xBD41` |
//! | `ipf_filter.ipf_input` | `errno_t (*)(void *, mbuf_t *, int, u_int8_t)` | `FiPPiiE` | `0x78FF` |
//! | `ipf_output` | `errno_t (*)(void *, mbuf_t *, ipf_pktopts_t)` | `FiPPPE` | `0xBCAD` |
//! | `ipf_detach` | `void (*)(void *)` | `FvPE` | `0x2ABE` |
//! | `kern_ctl_reg.ctl_connect`, `ctl_bind` | `errno_t (*)(kern_ctl_ref, struct sockaddr_ctl *, void **)` | `FiPPPE` | `0xBCAD` |
//! | `ctl_disconnect` | `errno_t (*)(kern_ctl_ref, u_int32_t, void *)` | `FiPiPE` | `0x392E` |
//! | `ctl_send`, `ctl_send_list` | `errno_t (*)(kern_ctl_ref, u_int32_t, void *, mbuf_t, int)` | `FiPiPPiE` | `0xA198` |
//! | `ctl_setopt` | `errno_t (*)(kern_ctl_ref, u_int32_t, void *, int, void *, size_t)` | `FiPiPiPiE` | `0x5070` |
//! | `ctl_getopt` | `errno_t (*)(kern_ctl_ref, u_int32_t, void *, int, void *, size_t *)` | `FiPiPiPPE` | `0x821F` |
//! | `ctl_rcvd` | `void (*)(kern_ctl_ref, u_int32_t, void *, int)` | `FvPiPiE` | `0x012C` |
//!
//! Because the encoding ignores pointee types, many callbacks share a
//! discriminator (`sf_attach` and kmod start both hash `FiPPE`). That is
//! clang's ABI, not a mistake here.
//!
//! Sources (facts, not code): LLVM `llvm/lib/Support/SipHash.cpp` (key and
//! reduction), `clang/lib/AST/ASTContext.cpp` (`encodeTypeForFunctionPointerAuth`),
//! `clang/docs/PointerAuthentication.rst` (keys, blending), dyld
//! `include/mach-o/fixup-chains.h` (the auth fields of a chained pointer).

/// A pointer-authentication key, numbered as in the `ptrauth.h` ABI and the
/// 2-bit `key` field of arm64e chained fixups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Key {
    /// Instruction key A: function pointers (what the kernel uses for callbacks).
    IA = KEY_IA,
    /// Instruction key B: return addresses (never in data).
    IB = KEY_IB,
    /// Data key A: address-diversified data pointers (e.g. vtable pointers).
    DA = KEY_DA,
    /// Data key B.
    DB = KEY_DB,
}

/// `ptrauth_key_asia`.
pub const KEY_IA: u8 = 0;
/// `ptrauth_key_asib`.
pub const KEY_IB: u8 = 1;
/// `ptrauth_key_asda`.
pub const KEY_DA: u8 = 2;
/// `ptrauth_key_asdb`.
pub const KEY_DB: u8 = 3;

impl Key {
    /// The key of a 2-bit `key` field.
    pub const fn from_bits(bits: u8) -> Option<Key> {
        match bits {
            KEY_IA => Some(Key::IA),
            KEY_IB => Some(Key::IB),
            KEY_DA => Some(Key::DA),
            KEY_DB => Some(Key::DB),
            _ => None,
        }
    }

    /// The 2-bit field value.
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// How one pointer slot is signed: what an authenticated chained rebase or
/// bind records (`key`, `addrDiv`, `diversity`) and what run-time signing
/// (`pacia` with [`blend`]) must reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signing {
    pub key: Key,
    /// Blend the slot's address into the discriminator.
    pub addr_div: bool,
    /// The 16-bit constant discriminator.
    pub diversity: u16,
}

impl Signing {
    /// A function pointer the kernel calls through a type-discriminated
    /// pointer: key IA, no address diversity, the type's discriminator.
    pub const fn kernel_function_pointer(discriminator: u16) -> Signing {
        Signing {
            key: Key::IA,
            addr_div: false,
            diversity: discriminator,
        }
    }

    /// The schema of `kmod_info_t.start` / `.stop`.
    pub const KMOD_START_STOP: Signing = Signing::kernel_function_pointer(KMOD_START_STOP);

    /// An `__auth_got` slot read by an auth stub (`braa x16, x17` with x17 =
    /// the slot's address): key IA, address-diversified, discriminator 0.
    pub const AUTH_GOT: Signing = Signing {
        key: Key::IA,
        addr_div: true,
        diversity: 0,
    };

    /// The discriminator to sign with when the pointer is stored at
    /// `slot_address` (run-time signing: `pacia ptr, disc`).
    pub const fn discriminator_at(self, slot_address: u64) -> u64 {
        if self.addr_div {
            blend(slot_address, self.diversity)
        } else {
            self.diversity as u64
        }
    }
}

/// `ptrauth_blend_discriminator`: the low 48 bits of the address with the
/// 16-bit constant in the top 16 bits.
pub const fn blend(address: u64, diversity: u16) -> u64 {
    (address & 0x0000_FFFF_FFFF_FFFF) | ((diversity as u64) << 48)
}

/// The discriminator of `kern_return_t (*)(kmod_info_t *, void *)` (encoding
/// `FiPPE`): kmod start and stop routines.
pub const KMOD_START_STOP: u16 = 0xE4FE;

/// Function-pointer types prx hands to the kernel: (C type as xnu's headers
/// spell it, clang's function-type encoding). Each entry's discriminator is
/// `function_type_discriminator(encoding)`; the module docs list the values,
/// and a test compares every entry with clang-19.
pub const CALLBACKS: &[(&str, &str)] = &[
    // osfmk/mach/kmod.h: kmod_start_func_t, kmod_stop_func_t
    ("kern_return_t (*)(kmod_info_t *ki, void *data)", "FiPPE"),
    ("int (*)(void)", "FiE"),
    // bsd/sys/kpi_socketfilter.h, struct sflt_filter
    ("void (*)(sflt_handle handle)", "FviE"),
    ("errno_t (*)(void **cookie, socket_t so)", "FiPPE"),
    ("void (*)(void *cookie, socket_t so)", "FvPPE"),
    (
        "void (*)(void *cookie, socket_t so, sflt_event_t event, void *param)",
        "FvPPiPE",
    ),
    (
        "int (*)(void *cookie, socket_t so, struct sockaddr **sa)",
        "FiPPPE",
    ),
    (
        "errno_t (*)(void *cookie, socket_t so, const struct sockaddr *from, mbuf_t *data, \
         mbuf_t *control, sflt_data_flag_t flags)",
        "FiPPPPPiE",
    ),
    (
        "errno_t (*)(void *cookie, socket_t so, const struct sockaddr *to)",
        "FiPPPE",
    ),
    (
        "errno_t (*)(void *cookie, socket_t so, sockopt_t opt)",
        "FiPPPE",
    ),
    ("errno_t (*)(void *cookie, socket_t so)", "FiPPE"),
    (
        "errno_t (*)(void *cookie, socket_t so, unsigned long request, const char *argp)",
        "FiPPiPE",
    ),
    (
        "errno_t (*)(void *cookie, socket_t so_listen, socket_t so, const struct sockaddr *local, \
         const struct sockaddr *remote)",
        "FiPPPPPE",
    ),
    // bsd/netinet/kpi_ipfilter.h, struct ipf_filter
    (
        "errno_t (*)(void *cookie, mbuf_t *data, int offset, u_int8_t protocol)",
        "FiPPiiE",
    ),
    (
        "errno_t (*)(void *cookie, mbuf_t *data, ipf_pktopts_t options)",
        "FiPPPE",
    ),
    ("void (*)(void *cookie)", "FvPE"),
    // bsd/sys/kern_control.h, struct kern_ctl_reg (connect and bind share a type)
    (
        "errno_t (*)(kern_ctl_ref kctlref, struct sockaddr_ctl *sac, void **unitinfo)",
        "FiPPPE",
    ),
    (
        "errno_t (*)(kern_ctl_ref kctlref, u_int32_t unit, void *unitinfo)",
        "FiPiPE",
    ),
    (
        "errno_t (*)(kern_ctl_ref kctlref, u_int32_t unit, void *unitinfo, mbuf_t m, int flags)",
        "FiPiPPiE",
    ),
    (
        "errno_t (*)(kern_ctl_ref kctlref, u_int32_t unit, void *unitinfo, int opt, void *data, \
         size_t len)",
        "FiPiPiPiE",
    ),
    (
        "errno_t (*)(kern_ctl_ref kctlref, u_int32_t unit, void *unitinfo, int opt, void *data, \
         size_t *len)",
        "FiPiPiPPE",
    ),
    (
        "void (*)(kern_ctl_ref kctlref, u_int32_t unit, void *unitinfo, int flags)",
        "FvPiPiE",
    ),
];

/// The discriminator clang gives a function pointer type whose encoding (see
/// the module docs) is `encoding`, e.g. `"FiPPE"` → 0xE4FE.
pub fn function_type_discriminator(encoding: &str) -> u16 {
    stable_discriminator(encoding)
}

/// LLVM's `getPointerAuthStableSipHash`: clang's
/// `__builtin_ptrauth_string_discriminator(s)`.
pub fn stable_discriminator(s: &str) -> u16 {
    let hash = siphash24(&STABLE_HASH_KEY, s.as_bytes());
    // `hash % 0xFFFF` < 0xFFFF, so the result fits and is never 0.
    (hash % 0xFFFF) as u16 + 1
}

/// The fixed key of LLVM's stable SipHash (`llvm/lib/Support/SipHash.cpp`).
const STABLE_HASH_KEY: [u8; 16] = [
    0xb5, 0xd4, 0xc9, 0xeb, 0x79, 0x10, 0x4a, 0x79, 0x6f, 0xec, 0x8b, 0x1b, 0x42, 0x87, 0x81, 0xd4,
];

/// SipHash-2-4 with 64-bit output (Aumasson & Bernstein, 2012), returned as the
/// little-endian interpretation of the 8 output bytes.
pub fn siphash24(key: &[u8; 16], message: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    let k1 = u64::from_le_bytes([
        key[8], key[9], key[10], key[11], key[12], key[13], key[14], key[15],
    ]);
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575, // "somepseu"
        k1 ^ 0x646f_7261_6e64_6f6d, // "dorandom"
        k0 ^ 0x6c79_6765_6e65_7261, // "lygenera"
        k1 ^ 0x7465_6462_7974_6573, // "tedbytes"
    ];

    let mut blocks = message.chunks_exact(8);
    for block in &mut blocks {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        compress(&mut v, u64::from_le_bytes(word), 2);
    }
    // The last block: the remaining bytes, zero-padded, with the message length
    // (mod 256) in the top byte.
    let mut last = [0u8; 8];
    let tail = blocks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[7] = message.len() as u8;
    compress(&mut v, u64::from_le_bytes(last), 2);

    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Absorbs one message word with `rounds` SipRounds.
fn compress(v: &mut [u64; 4], m: u64, rounds: usize) {
    v[3] ^= m;
    for _ in 0..rounds {
        sip_round(v);
    }
    v[0] ^= m;
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// SipHash-2-4 (64-bit output) under the key 00 01 .. 0f of the messages
    /// "" , 00, 00 01, ..., 00 .. 3e: all of `vectors_sip64` from the reference
    /// `vectors.h` of the SipHash authors (github.com/veorq/SipHash), each
    /// 8-byte tag read as a little-endian u64.
    #[rustfmt::skip]
    const REFERENCE_SIP64: [u64; 64] = [
        0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a, 0x85676696d7fb7e2d,
        0xcf2794e0277187b7, 0x18765564cd99a68d, 0xcbc9466e58fee3ce, 0xab0200f58b01d137,
        0x93f5f5799a932462, 0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
        0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee, 0xa129ca6149be45e5,
        0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794, 0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd,
        0xbed65cf21aa2ee98, 0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
        0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3, 0x2f2e6163076bcfad,
        0xde4daaaca71dc9a5, 0xa6a2506687956571, 0xad87a3535c49ef28, 0x32d892fad841c342,
        0x7127512f72f27cce, 0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
        0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d, 0x9abfd8766a33735c,
        0x0e3ea96b5304a7d0, 0xad0c42d6fc585992, 0x187306c89bc215a9, 0xd4a60abcf3792b95,
        0xf935451de4f21df2, 0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
        0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72, 0xa192d576b245165a,
        0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f, 0x7fa8220ba3b2ecea, 0x245731c13ca42499,
        0xb78dbfaf3a8d83bd, 0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
        0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57, 0x958a324ceb064572,
    ];

    #[test]
    fn siphash_reference_vectors() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let message: Vec<u8> = (0u8..64).collect();
        for (len, expected) in REFERENCE_SIP64.iter().enumerate() {
            assert_eq!(
                siphash24(&key, &message[..len]),
                *expected,
                "message of {len} bytes"
            );
        }
    }

    #[test]
    fn known_discriminators() {
        assert_eq!(function_type_discriminator("FiPPE"), KMOD_START_STOP);
        assert_eq!(function_type_discriminator("FiPPE"), 0xE4FE);
        assert_eq!(function_type_discriminator("FiE"), 0xA51F);
    }

    #[test]
    fn blend_and_signing() {
        assert_eq!(blend(0xFFFF_1234_5678_9ABC, 0xE4FE), 0xE4FE_1234_5678_9ABC);
        assert_eq!(Signing::KMOD_START_STOP.discriminator_at(0x4000), 0xE4FE);
        assert_eq!(Signing::AUTH_GOT.discriminator_at(0x4000), 0x4000);
        for bits in 0..4 {
            assert_eq!(Key::from_bits(bits).map(Key::bits), Some(bits));
        }
        assert_eq!(Key::from_bits(4), None);
    }

    // ----- clang-19 as an independent oracle -----

    /// Typedefs as xnu's headers declare them (osfmk/mach/kmod.h,
    /// bsd/sys/kernel_types.h, kpi_socketfilter.h, kpi_ipfilter.h,
    /// kern_control.h), reduced to what the callback types need.
    const XNU_TYPES: &str = "\
typedef int kern_return_t;
typedef int errno_t;
typedef unsigned char u_int8_t;
typedef unsigned int u_int32_t;
typedef unsigned long size_t;
typedef struct kmod_info kmod_info_t;
typedef struct socket *socket_t;
typedef struct mbuf *mbuf_t;
typedef struct sockopt *sockopt_t;
typedef u_int32_t sflt_handle;
typedef u_int32_t sflt_event_t;
typedef u_int32_t sflt_data_flag_t;
typedef struct ipf_pktopts *ipf_pktopts_t;
typedef void *kern_ctl_ref;
struct sockaddr;
struct sockaddr_ctl;
";

    /// Compiles `source` with clang-19 for arm64e and returns the 32-bit value
    /// of each `const unsigned v<i>` in it, read from the object's `__const`.
    fn clang_values(dir: &Path, source: &str, count: usize) -> Vec<u32> {
        use object::{Object, ObjectSection, ObjectSymbol};
        let c = dir.join("d.c");
        let o = dir.join("d.o");
        std::fs::write(&c, source).unwrap();
        // -fptrauth-intrinsics enables the __builtin_ptrauth_* builtins; the
        // type discriminator builtin does not depend on
        // -fptrauth-function-pointer-type-discrimination.
        let out = Command::new("clang-19")
            .args([
                "-target",
                "arm64e-apple-macos11",
                "-fptrauth-intrinsics",
                "-c",
            ])
            .arg(&c)
            .arg("-o")
            .arg(&o)
            .output()
            .unwrap_or_else(|e| panic!("cannot run clang-19 ({e}); install Debian's clang-19"));
        assert!(
            out.status.success(),
            "clang-19 failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&o).unwrap();
        let file = object::File::parse(&*bytes).unwrap();
        (0..count)
            .map(|i| {
                let name = format!("_v{i}");
                let sym = file
                    .symbols()
                    .find(|s| s.name() == Ok(&name))
                    .unwrap_or_else(|| panic!("{name}"));
                let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
                let data = section.data().unwrap();
                let at = (sym.address() - section.address()) as usize;
                u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn string_discriminators_match_clang() {
        let strings = [
            "",
            "foo",
            "FiPPE",
            "FiE",
            "1234567",
            "12345678",
            "a slightly longer string, 42",
        ];
        let mut source = String::new();
        for (i, s) in strings.iter().enumerate() {
            source.push_str(&format!(
                "const unsigned v{i} = __builtin_ptrauth_string_discriminator(\"{s}\");\n"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let values = clang_values(dir.path(), &source, strings.len());
        for (s, v) in strings.iter().zip(values) {
            assert_eq!(u32::from(stable_discriminator(s)), v, "string {s:?}");
        }
    }

    #[test]
    fn every_callback_matches_clang() {
        let mut source = String::from(XNU_TYPES);
        for (i, (ty, _)) in CALLBACKS.iter().enumerate() {
            source.push_str(&format!(
                "const unsigned v{i} = __builtin_ptrauth_type_discriminator({ty});\n"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let values = clang_values(dir.path(), &source, CALLBACKS.len());
        for ((ty, encoding), v) in CALLBACKS.iter().zip(values) {
            assert_eq!(
                u32::from(function_type_discriminator(encoding)),
                v,
                "{ty} encoded as {encoding}"
            );
        }
        assert_eq!(
            u32::from(KMOD_START_STOP),
            clang_values(
                dir.path(),
                &format!(
                    "{XNU_TYPES}const unsigned v0 = __builtin_ptrauth_type_discriminator(kern_return_t (*)(kmod_info_t *, void *));\n"
                ),
                1
            )[0]
        );
    }

    /// The documented table in the module docs lists each encoding with its
    /// value; keep the two in step.
    #[test]
    fn doc_table_values() {
        let doc = include_str!("ptrauth.rs");
        for (_, encoding) in CALLBACKS {
            let row = format!(
                "`{encoding}` | `0x{:04X}` |",
                function_type_discriminator(encoding)
            );
            assert!(doc.contains(&row), "module docs lack the row {row}");
        }
    }
}
