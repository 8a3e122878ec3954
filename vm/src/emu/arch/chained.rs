//! `LC_DYLD_CHAINED_FIXUPS` with pointer format 7 (`DYLD_CHAINED_PTR_ARM64E_KERNEL`),
//! decoded into the list of slots to fill — what the kernel-collection builder
//! does before xnu ever runs a kext. Pure and host-independent; the signing
//! itself needs the aarch64 PAC instructions (see the `aarch64` module).
//!
//! The layout is dyld's `<mach-o/fixup-chains.h>` as kextld writes it
//! (`kextld/src/link/arm64e/fixups.rs`, docs/kext-format.md): imports format 1
//! (`DYLD_CHAINED_IMPORT`), one `dyld_chained_starts_in_segment` per fixed-up
//! segment, 4 KiB chain pages, `next` in 4-byte strides.
//!
//! | kind | bits |
//! |---|---|
//! | rebase | target vm offset 0–42, high8 43–50, next 51–61, bind 62 = 0, auth 63 = 0 |
//! | auth rebase | target 0–31, diversity 32–47, addrDiv 48, key 49–50, next, bind 0, auth 1 |
//! | bind | ordinal 0–15, addend 32–50 (signed), next, bind 1, auth 0 |
//! | auth bind | ordinal 0–15, diversity 32–47, addrDiv 48, key 49–50, next, bind 1, auth 1 |

/// `DYLD_CHAINED_PTR_ARM64E_KERNEL`.
pub const POINTER_FORMAT_ARM64E_KERNEL: u16 = 7;
const START_NONE: u16 = 0xFFFF;
const START_MULTI: u16 = 0x8000;

/// How a slot's pointer is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    /// 0 IA, 1 IB, 2 DA, 3 DB.
    pub key: u8,
    pub addr_div: bool,
    pub diversity: u16,
}

impl Auth {
    /// The discriminator for a pointer stored at `slot` (blended when address-diversified).
    pub fn discriminator_at(self, slot: u64) -> u64 {
        if self.addr_div {
            super::blend(slot, self.diversity)
        } else {
            u64::from(self.diversity)
        }
    }

    pub fn key_name(self) -> &'static str {
        ["IA", "IB", "DA", "DB"][usize::from(self.key & 3)]
    }
}

/// What one slot becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Image vm offset `offset` (plus the load address), top byte `high8`.
    Rebase { offset: u64, high8: u8 },
    /// The address of the import `symbol` plus `addend`.
    Bind { symbol: String, addend: i64 },
}

/// One fixed-up slot: its vm offset in the image, what it points to, and how it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixup {
    pub slot: u64,
    pub target: Target,
    pub auth: Option<Auth>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("chained fixups: u16 at {at:#x} past the end"))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("chained fixups: u32 at {at:#x} past the end"))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
        .ok_or_else(|| format!("u64 at {at:#x} past the end"))
}
const fn bits(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1u64 << width) - 1)
}

/// Decodes the fixups blob `blob` (the `LC_DYLD_CHAINED_FIXUPS` payload) of an
/// image whose unrelocated vm contents are `mem` (`mem[0]` is vm offset 0).
pub fn decode(blob: &[u8], mem: &[u8]) -> Result<Vec<Fixup>, String> {
    let version = u32_at(blob, 0)?;
    let starts = u32_at(blob, 4)? as usize;
    let imports = u32_at(blob, 8)? as usize;
    let symbols = u32_at(blob, 12)? as usize;
    let imports_count = u32_at(blob, 16)? as usize;
    let imports_format = u32_at(blob, 20)?;
    let symbols_format = u32_at(blob, 24)?;
    if version != 0 || imports_format != 1 || symbols_format != 0 {
        return Err(format!(
            "chained fixups version {version}, imports_format {imports_format}, symbols_format \
             {symbols_format}: the kernel-collection builder takes version 0, imports format 1 \
             (DYLD_CHAINED_IMPORT), uncompressed names"
        ));
    }
    let mut names = Vec::with_capacity(imports_count);
    for i in 0..imports_count {
        let e = u32_at(blob, imports + 4 * i)?;
        let off = symbols + (e >> 9) as usize;
        let tail = blob
            .get(off..)
            .ok_or_else(|| format!("import #{i}: name offset {off:#x} past the end"))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("import #{i}: unterminated name"))?;
        names.push(String::from_utf8_lossy(&tail[..end]).into_owned());
    }
    let seg_count = u32_at(blob, starts)? as usize;
    let mut out = Vec::new();
    for seg in 0..seg_count {
        let info = u32_at(blob, starts + 4 + 4 * seg)? as usize;
        if info == 0 {
            continue;
        }
        let at = starts + info;
        let page_size = u64::from(u16_at(blob, at + 4)?);
        let format = u16_at(blob, at + 6)?;
        let seg_off = u64_at(blob, at + 8)?;
        let page_count = u16_at(blob, at + 20)? as usize;
        if format != POINTER_FORMAT_ARM64E_KERNEL {
            return Err(format!(
                "segment #{seg}: pointer format {format}; a kext's is 7 (DYLD_CHAINED_PTR_ARM64E_KERNEL)"
            ));
        }
        if page_size == 0 {
            return Err(format!("segment #{seg}: page_size 0"));
        }
        for page in 0..page_count {
            let start = u16_at(blob, at + 22 + 2 * page)?;
            if start == START_NONE {
                continue;
            }
            if start & START_MULTI != 0 {
                return Err(format!(
                    "segment #{seg} page {page}: DYLD_CHAINED_PTR_START_MULTI is not used by kexts"
                ));
            }
            let mut slot = seg_off + page as u64 * page_size + u64::from(start);
            loop {
                let raw = u64_at(mem, slot as usize)
                    .map_err(|e| format!("chain slot {slot:#x}: {e} of the image"))?;
                let auth = (bits(raw, 63, 1) == 1).then(|| Auth {
                    key: bits(raw, 49, 2) as u8,
                    addr_div: bits(raw, 48, 1) == 1,
                    diversity: bits(raw, 32, 16) as u16,
                });
                let target = if bits(raw, 62, 1) == 1 {
                    let ordinal = bits(raw, 0, 16) as usize;
                    let symbol = names.get(ordinal).cloned().ok_or_else(|| {
                        format!("slot {slot:#x}: bind to import #{ordinal} of {imports_count}")
                    })?;
                    let addend = if auth.is_some() {
                        0
                    } else {
                        ((bits(raw, 32, 19) << 45) as i64) >> 45
                    };
                    Target::Bind { symbol, addend }
                } else if auth.is_some() {
                    Target::Rebase {
                        offset: bits(raw, 0, 32),
                        high8: 0,
                    }
                } else {
                    Target::Rebase {
                        offset: bits(raw, 0, 43),
                        high8: bits(raw, 43, 8) as u8,
                    }
                };
                out.push(Fixup { slot, target, auth });
                let next = bits(raw, 51, 11);
                if next == 0 {
                    break;
                }
                slot += next * 4;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    /// A blob with one segment at vm offset 0x1000 (one page, chain from 0x10)
    /// and two imports, written by hand after `<mach-o/fixup-chains.h>`.
    fn blob() -> Vec<u8> {
        let mut b = Vec::new();
        // header (28 bytes): version, starts 32, imports, symbols, count 2, format 1, 0
        let starts = 32u32;
        let starts_len = 4 + 2 * 4 + 24;
        let imports = starts + starts_len;
        let symbols = imports + 8;
        for x in [0, starts, imports, symbols, 2, 1, 0] {
            put32(&mut b, x);
        }
        b.resize(starts as usize, 0);
        put32(&mut b, 2); // seg_count
        put32(&mut b, 0); // __TEXT: none
        put32(&mut b, 12); // __DATA at +12
        put32(&mut b, 24); // size
        b.extend_from_slice(&0x1000u16.to_le_bytes());
        b.extend_from_slice(&7u16.to_le_bytes());
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        put32(&mut b, 0);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0x10u16.to_le_bytes());
        assert_eq!(b.len(), imports as usize);
        put32(&mut b, 0xFE | 1 << 9); // "_printf" at 1
        put32(&mut b, 0xFE | 9 << 9); // "_IOLog" at 9
        b.extend_from_slice(b"\0_printf\0_IOLog\0");
        b
    }

    #[test]
    fn decodes_each_kind_and_follows_next() {
        let mut mem = vec![0u8; 0x2000];
        let w = |mem: &mut Vec<u8>, at: usize, v: u64| {
            mem[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        // rebase → 0x345, high8 0x12, next 2 (8 bytes)
        w(&mut mem, 0x1010, 0x345 | 0x12 << 43 | 2 << 51);
        // auth rebase → 0x400, IA addrDiv, diversity 0xE4FE, next 2
        w(
            &mut mem,
            0x1018,
            0x400 | 0xE4FE << 32 | 1 << 48 | 2 << 51 | 1 << 63,
        );
        // bind _IOLog addend -4, next 2
        w(&mut mem, 0x1020, 1 | (0x7FFFC << 32) | 2 << 51 | 1 << 62);
        // auth bind _printf, DB, diversity 7, end
        w(&mut mem, 0x1028, 7 << 32 | 3 << 49 | 1 << 62 | 1 << 63);
        let f = decode(&blob(), &mem).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(
            f[0].target,
            Target::Rebase {
                offset: 0x345,
                high8: 0x12
            }
        );
        assert_eq!(f[0].auth, None);
        assert_eq!(f[1].slot, 0x1018);
        assert_eq!(
            f[1].auth,
            Some(Auth {
                key: 0,
                addr_div: true,
                diversity: 0xE4FE
            })
        );
        assert_eq!(
            f[1].auth.unwrap().discriminator_at(0x7F00_0000_1018),
            0xE4FE_7F00_0000_1018
        );
        assert_eq!(
            f[2].target,
            Target::Bind {
                symbol: "_IOLog".into(),
                addend: -4
            }
        );
        assert_eq!(
            f[3].target,
            Target::Bind {
                symbol: "_printf".into(),
                addend: 0
            }
        );
        assert_eq!(f[3].auth.unwrap().key_name(), "DB");
    }

    #[test]
    fn rejects_other_formats_and_bad_ordinals() {
        let mut b = blob();
        b[32 + 12 + 6] = 1; // pointer format 1
        assert!(
            decode(&b, &[0u8; 0x2000])
                .unwrap_err()
                .contains("pointer format 1")
        );
        let mut mem = vec![0u8; 0x2000];
        mem[0x1010..0x1018].copy_from_slice(&(5u64 | 1 << 62).to_le_bytes());
        assert!(decode(&blob(), &mem).unwrap_err().contains("import #5"));
    }
}
