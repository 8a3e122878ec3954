//! Universal ("fat") binaries: one file holding a kext slice per architecture.
//!
//! Layout (all fields big-endian, `<mach-o/fat.h>`): `fat_header { magic
//! 0xCAFEBABE, nfat_arch }`, then one `fat_arch { cputype, cpusubtype, offset,
//! size, align }` per slice, then the slices, each at an offset that is a
//! multiple of `2^align`: 2^12 for x86_64 and 2^14 for arm64e, as `lipo` uses
//! (the slices' page sizes). Only a writer: the verifier reads fat headers with
//! its own code (`verify::fat`), so a writer bug cannot hide behind a shared reader.

use crate::Arch;

/// `FAT_MAGIC`.
pub const FAT_MAGIC: u32 = 0xCAFE_BABE;
const FAT_HEADER_SIZE: usize = 8;
const FAT_ARCH_SIZE: usize = 20;

/// A universal-binary problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FatError {
    /// No slices were given.
    #[error("a universal binary needs at least one slice")]
    Empty,
    /// Two slices of one architecture.
    #[error("two {0} slices; a universal binary holds one slice per architecture")]
    DuplicateArch(Arch),
    /// A slice's Mach-O header does not match its declared architecture.
    #[error(
        "the {arch} slice is not a 64-bit {arch} Mach-O (cputype {cputype:#x}, cpusubtype {cpusubtype:#x})"
    )]
    WrongSlice {
        /// Declared architecture.
        arch: Arch,
        /// cputype found in the slice.
        cputype: u32,
        /// cpusubtype found in the slice.
        cpusubtype: u32,
    },
    /// A slice is not a 64-bit Mach-O of the cputype given for it.
    #[error(
        "a slice given as cputype {cputype:#x} is not a 64-bit Mach-O of that cputype (found {found:#x})"
    )]
    WrongCpu {
        /// cputype given.
        cputype: u32,
        /// cputype found in the slice.
        found: u32,
    },
    /// The file is too large for 32-bit fat offsets.
    #[error("slices too large for a 32-bit fat header")]
    TooLarge,
}

/// `(cputype, cpusubtype)` of an architecture's kext slice.
pub fn cpu_of(arch: Arch) -> (u32, u32) {
    match arch {
        Arch::X86_64 => (0x0100_0007, 3),
        Arch::Arm64e => (0x0100_000C, 0xC000_0002),
    }
}

/// log2 of the slice alignment `lipo` uses for an architecture.
pub fn align_log2(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => 12,
        Arch::Arm64e => 14,
    }
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// One thin slice for [`write_slices`]: its `fat_arch` fields and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Slice<'a> {
    /// `cputype` (must equal the slice's Mach-O header).
    pub cputype: u32,
    /// `cpusubtype` as written in the fat header.
    pub cpusubtype: u32,
    /// log2 of the slice's alignment in the file.
    pub align_log2: u32,
    /// The 64-bit Mach-O.
    pub bytes: &'a [u8],
}

/// Writes a universal binary from thin kext slices, in [`Arch::ALL`] order. Each
/// slice must be a 64-bit Mach-O of its architecture (cpusubtype compared with
/// the capability bits masked, so arm64e's ABI bits need not be set yet).
pub fn write(slices: &[(Arch, &[u8])]) -> Result<Vec<u8>, FatError> {
    let mut sorted: Vec<(Arch, &[u8])> = slices.to_vec();
    sorted.sort_by_key(|(a, _)| *a);
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(FatError::DuplicateArch(pair[0].0));
        }
    }
    let mut out = Vec::new();
    for &(arch, bytes) in &sorted {
        let (cputype, cpusubtype) = cpu_of(arch);
        let found = (le32(bytes, 4).unwrap_or(0), le32(bytes, 8).unwrap_or(0));
        if le32(bytes, 0) != Some(0xFEED_FACF)
            || found.0 != cputype
            || found.1 & 0x00FF_FFFF != cpusubtype & 0x00FF_FFFF
        {
            return Err(FatError::WrongSlice {
                arch,
                cputype: found.0,
                cpusubtype: found.1,
            });
        }
        out.push(Slice {
            cputype,
            cpusubtype: found.1,
            align_log2: align_log2(arch),
            bytes,
        });
    }
    write_slices(&out)
}

/// Writes a universal binary from slices whose `fat_arch` fields the caller
/// chose (user-space executables: x86_64 and arm64), in the given order. Each
/// slice must be a 64-bit Mach-O whose header has the slice's cputype.
pub fn write_slices(slices: &[Slice<'_>]) -> Result<Vec<u8>, FatError> {
    if slices.is_empty() {
        return Err(FatError::Empty);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&FAT_MAGIC.to_be_bytes());
    out.extend_from_slice(&(slices.len() as u32).to_be_bytes());
    let mut offset = FAT_HEADER_SIZE + FAT_ARCH_SIZE * slices.len();
    let mut placed = Vec::new();
    for s in slices {
        if le32(s.bytes, 0) != Some(0xFEED_FACF) || le32(s.bytes, 4) != Some(s.cputype) {
            return Err(FatError::WrongCpu {
                cputype: s.cputype,
                found: le32(s.bytes, 4).unwrap_or(0),
            });
        }
        let align = 1usize << s.align_log2;
        offset = offset.div_ceil(align) * align;
        let header = [
            s.cputype,
            s.cpusubtype,
            u32::try_from(offset).map_err(|_| FatError::TooLarge)?,
            u32::try_from(s.bytes.len()).map_err(|_| FatError::TooLarge)?,
            s.align_log2,
        ];
        for v in header {
            out.extend_from_slice(&v.to_be_bytes());
        }
        placed.push((offset, s.bytes));
        offset = offset
            .checked_add(s.bytes.len())
            .ok_or(FatError::TooLarge)?;
    }
    u32::try_from(offset).map_err(|_| FatError::TooLarge)?;
    for (at, bytes) in placed {
        out.resize(at, 0);
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thin(arch: Arch, len: usize) -> Vec<u8> {
        let (t, s) = cpu_of(arch);
        let mut v = vec![0u8; len];
        v[0..4].copy_from_slice(&0xFEED_FACFu32.to_le_bytes());
        v[4..8].copy_from_slice(&t.to_le_bytes());
        v[8..12].copy_from_slice(&s.to_le_bytes());
        v[len - 1] = 0xAB;
        v
    }

    /// (cputype, offset, size) of each fat_arch entry, read straight from the header.
    fn arches(fat: &[u8]) -> Vec<(u32, usize, usize)> {
        let be = |at: usize| u32::from_be_bytes(fat[at..at + 4].try_into().unwrap());
        assert_eq!(be(0), FAT_MAGIC);
        (0..be(4) as usize)
            .map(|i| {
                let at = FAT_HEADER_SIZE + i * FAT_ARCH_SIZE;
                (be(at), be(at + 8) as usize, be(at + 12) as usize)
            })
            .collect()
    }

    #[test]
    fn round_trip_with_alignment() {
        let x = thin(Arch::X86_64, 5000);
        let a = thin(Arch::Arm64e, 3000);
        let fat = write(&[(Arch::Arm64e, &a), (Arch::X86_64, &x)]).unwrap();
        let slices = arches(&fat);
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].0, cpu_of(Arch::X86_64).0);
        assert_eq!(slices[0].1, 0x1000);
        assert_eq!(slices[1].0, cpu_of(Arch::Arm64e).0);
        assert_eq!(slices[1].1 % 0x4000, 0);
        assert_eq!(&fat[slices[0].1..slices[0].1 + slices[0].2], &x[..]);
        assert_eq!(&fat[slices[1].1..slices[1].1 + slices[1].2], &a[..]);
    }

    #[test]
    fn rejects_bad_input() {
        let x = thin(Arch::X86_64, 64);
        assert_eq!(write(&[]), Err(FatError::Empty));
        assert_eq!(
            write(&[(Arch::X86_64, &x), (Arch::X86_64, &x)]),
            Err(FatError::DuplicateArch(Arch::X86_64))
        );
        assert!(matches!(
            write(&[(Arch::Arm64e, &x)]),
            Err(FatError::WrongSlice { .. })
        ));
    }
}
