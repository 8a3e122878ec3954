//! Universal ("fat") binaries: one file holding a kext slice per architecture.
//!
//! Layout (all fields big-endian, `<mach-o/fat.h>`): `fat_header { magic
//! 0xCAFEBABE, nfat_arch }`, then one `fat_arch { cputype, cpusubtype, offset,
//! size, align }` per slice, then the slices, each at an offset that is a
//! multiple of `2^align`: 2^12 for x86_64 and 2^14 for arm64e, as `lipo` uses
//! (the slices' page sizes).

use std::ops::Range;

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
    #[error("the {arch} slice is not a 64-bit {arch} Mach-O (cputype {cputype:#x}, cpusubtype {cpusubtype:#x})")]
    WrongSlice {
        /// Declared architecture.
        arch: Arch,
        /// cputype found in the slice.
        cputype: u32,
        /// cpusubtype found in the slice.
        cpusubtype: u32,
    },
    /// The file is too large for 32-bit fat offsets.
    #[error("slices too large for a 32-bit fat header")]
    TooLarge,
    /// A fat file that cannot be read.
    #[error("malformed universal binary: {0}")]
    Malformed(String),
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

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes a universal binary from thin slices, in [`Arch::ALL`] order. Each
/// slice must be a 64-bit Mach-O of its architecture (cpusubtype compared with
/// the capability bits masked, so arm64e's ABI bits need not be set yet).
pub fn write(slices: &[(Arch, &[u8])]) -> Result<Vec<u8>, FatError> {
    if slices.is_empty() {
        return Err(FatError::Empty);
    }
    let mut sorted: Vec<(Arch, &[u8])> = slices.to_vec();
    sorted.sort_by_key(|(a, _)| *a);
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(FatError::DuplicateArch(pair[0].0));
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&FAT_MAGIC.to_be_bytes());
    out.extend_from_slice(&(sorted.len() as u32).to_be_bytes());
    let mut offset = FAT_HEADER_SIZE + FAT_ARCH_SIZE * sorted.len();
    let mut placed = Vec::new();
    for &(arch, bytes) in &sorted {
        let (cputype, cpusubtype) = cpu_of(arch);
        let found = (le32(bytes, 4).unwrap_or(0), le32(bytes, 8).unwrap_or(0));
        if le32(bytes, 0) != Some(0xFEED_FACF) || found.0 != cputype || found.1 & 0x00FF_FFFF != cpusubtype & 0x00FF_FFFF {
            return Err(FatError::WrongSlice { arch, cputype: found.0, cpusubtype: found.1 });
        }
        let align = 1usize << align_log2(arch);
        offset = offset.div_ceil(align) * align;
        let header = [cputype, found.1, u32::try_from(offset).map_err(|_| FatError::TooLarge)?,
            u32::try_from(bytes.len()).map_err(|_| FatError::TooLarge)?, align_log2(arch)];
        for v in header {
            out.extend_from_slice(&v.to_be_bytes());
        }
        placed.push((offset, bytes));
        offset = offset.checked_add(bytes.len()).ok_or(FatError::TooLarge)?;
    }
    u32::try_from(offset).map_err(|_| FatError::TooLarge)?;
    for (at, bytes) in placed {
        out.resize(at, 0);
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// One slice of a universal binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// `cputype`.
    pub cputype: u32,
    /// `cpusubtype`.
    pub cpusubtype: u32,
    /// The architecture, when it is one kexts are built for.
    pub arch: Option<Arch>,
    /// `log2` alignment declared in the header.
    pub align: u32,
    /// Byte range of the slice in the file.
    pub range: Range<usize>,
}

/// True when `bytes` starts with the fat magic.
pub fn is_fat(bytes: &[u8]) -> bool {
    be32(bytes, 0) == Some(FAT_MAGIC)
}

/// Reads the slice table of a universal binary, checking that every slice lies
/// inside the file, is aligned as declared, and that slices do not overlap.
pub fn parse(bytes: &[u8]) -> Result<Vec<Slice>, FatError> {
    let bad = |m: String| FatError::Malformed(m);
    if !is_fat(bytes) {
        return Err(bad("no FAT_MAGIC (0xCAFEBABE) at offset 0".into()));
    }
    let n = be32(bytes, 4).ok_or_else(|| bad("truncated fat header".into()))? as usize;
    if n == 0 || n > 16 {
        return Err(bad(format!("nfat_arch = {n}")));
    }
    let mut slices: Vec<Slice> = Vec::with_capacity(n);
    for i in 0..n {
        let at = FAT_HEADER_SIZE + i * FAT_ARCH_SIZE;
        let f = |k: usize| be32(bytes, at + 4 * k).ok_or_else(|| bad(format!("truncated fat_arch {i}")));
        let (cputype, cpusubtype, offset, size, align) = (f(0)?, f(1)?, f(2)? as usize, f(3)? as usize, f(4)?);
        let end = offset.checked_add(size).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            bad(format!("slice {i} (offset {offset:#x}, size {size:#x}) runs past the end of the file ({:#x})", bytes.len()))
        })?;
        if align > 15 || offset % (1usize << align) != 0 {
            return Err(bad(format!("slice {i} at offset {offset:#x} is not aligned to 2^{align}")));
        }
        let arch = Arch::ALL.into_iter().find(|&a| {
            let (t, s) = cpu_of(a);
            t == cputype && (s & 0x00FF_FFFF) == (cpusubtype & 0x00FF_FFFF)
        });
        slices.push(Slice { cputype, cpusubtype, arch, align, range: offset..end });
    }
    let mut ranges: Vec<&Range<usize>> = slices.iter().map(|s| &s.range).collect();
    ranges.sort_by_key(|r| r.start);
    if ranges.first().is_some_and(|r| r.start < FAT_HEADER_SIZE + n * FAT_ARCH_SIZE)
        || ranges.windows(2).any(|w| w[0].end > w[1].start)
    {
        return Err(bad("slices overlap each other or the fat header".into()));
    }
    Ok(slices)
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

    #[test]
    fn round_trip_with_alignment() {
        let x = thin(Arch::X86_64, 5000);
        let a = thin(Arch::Arm64e, 3000);
        let fat = write(&[(Arch::Arm64e, &a), (Arch::X86_64, &x)]).unwrap();
        let slices = parse(&fat).unwrap();
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].arch, Some(Arch::X86_64));
        assert_eq!(slices[0].range.start, 0x1000);
        assert_eq!(slices[1].arch, Some(Arch::Arm64e));
        assert_eq!(slices[1].range.start % 0x4000, 0);
        assert_eq!(&fat[slices[0].range.clone()], &x[..]);
        assert_eq!(&fat[slices[1].range.clone()], &a[..]);
    }

    #[test]
    fn rejects_bad_input() {
        let x = thin(Arch::X86_64, 64);
        assert_eq!(write(&[]), Err(FatError::Empty));
        assert_eq!(write(&[(Arch::X86_64, &x), (Arch::X86_64, &x)]), Err(FatError::DuplicateArch(Arch::X86_64)));
        assert!(matches!(write(&[(Arch::Arm64e, &x)]), Err(FatError::WrongSlice { .. })));
        let fat = write(&[(Arch::X86_64, &x)]).unwrap();
        for cut in 0..fat.len() {
            assert!(parse(&fat[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
    }
}
