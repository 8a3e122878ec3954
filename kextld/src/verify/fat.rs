//! Universal (fat) files: the big-endian `fat_header` and `fat_arch` table.

use super::consts as macho;

use super::checks::{Ctx, arch_of, verify_slice};
use super::image::be_u32_at;
use super::{Report, Severity};
use crate::Arch;

const FAT_HEADER_SIZE: u64 = 8;
const FAT_ARCH_SIZE: u64 = 20;

/// True if `bytes` start with a fat magic (32- or 64-bit).
pub(super) fn is_fat(bytes: &[u8]) -> bool {
    matches!(
        be_u32_at(bytes, 0),
        Some(macho::FAT_MAGIC | macho::FAT_MAGIC_64)
    )
}

/// The x86_64/arm64e slices of a thin or universal file (unchecked beyond bounds).
pub(super) fn thin_slices(bytes: &[u8]) -> Vec<(Arch, &[u8])> {
    if !is_fat(bytes) || be_u32_at(bytes, 0) != Some(macho::FAT_MAGIC) {
        return super::image::u32_at(bytes, 4)
            .and_then(arch_of)
            .map(|a| vec![(a, bytes)])
            .unwrap_or_default();
    }
    let n = be_u32_at(bytes, 4).unwrap_or(0);
    (0..u64::from(n))
        .filter_map(|i| {
            let e = FAT_HEADER_SIZE + i * FAT_ARCH_SIZE;
            let arch = arch_of(be_u32_at(bytes, e)?)?;
            let off = u64::from(be_u32_at(bytes, e + 8)?);
            let size = u64::from(be_u32_at(bytes, e + 12)?);
            Some((arch, super::image::slice_at(bytes, off, size)?))
        })
        .collect()
}

/// The slice alignment (log2) lipo uses for an architecture: its page size.
fn required_align(arch: Arch) -> u32 {
    arch.page_size().trailing_zeros()
}

pub(super) fn verify_fat(bytes: &[u8], opts: &super::Options<'_>, report: &mut Report) {
    let mut ctx = Ctx {
        arch: None,
        findings: Vec::new(),
    };
    let len = bytes.len() as u64;
    if be_u32_at(bytes, 0) == Some(macho::FAT_MAGIC_64) {
        ctx.error(
            "fat",
            "the file uses the 64-bit fat header (FAT_MAGIC_64); kexts use FAT_MAGIC (0xcafebabe)"
                .into(),
        );
        report.findings.append(&mut ctx.findings);
        return;
    }
    let Some(nfat) = be_u32_at(bytes, 4) else {
        ctx.error(
            "fat",
            format!("universal header truncated: the file is only {len} bytes"),
        );
        report.findings.append(&mut ctx.findings);
        return;
    };
    let table_end = FAT_HEADER_SIZE + u64::from(nfat) * FAT_ARCH_SIZE;
    if nfat == 0 || table_end > len {
        ctx.error(
            "fat",
            format!("universal header lists {nfat} slices but the file ({len} bytes) cannot hold them: truncated or corrupt"),
        );
        report.findings.append(&mut ctx.findings);
        return;
    }
    let mut slices = Vec::new();
    let mut seen: Vec<Arch> = Vec::new();
    for i in 0..u64::from(nfat) {
        ctx.arch = None;
        let e = FAT_HEADER_SIZE + i * FAT_ARCH_SIZE;
        let field = |k: u64| be_u32_at(bytes, e + 4 * k).unwrap_or(0);
        let (cputype, cpusubtype, offset, size, align) =
            (field(0), field(1), field(2), field(3), field(4));
        let Some(arch) = arch_of(cputype) else {
            // The kernel picks its own architecture's slice and ignores the
            // others (docs/kext-format.md, "Universal files").
            ctx.push(
                Severity::Info,
                "fat",
                format!(
                    "slice {i} has cputype {cputype:#010x} (subtype {cpusubtype:#x}), which no \
                     kernel prx targets loads; ignored"
                ),
            );
            continue;
        };
        ctx.arch = Some(arch);
        if seen.contains(&arch) {
            ctx.error(
                "fat",
                format!("slice {i}: a second {arch} slice; keep one per architecture"),
            );
            continue;
        }
        seen.push(arch);
        let start = u64::from(offset);
        let end = start + u64::from(size);
        let need = required_align(arch);
        let mut ok = true;
        if end > len || start < table_end {
            ctx.error(
                "fat",
                format!(
                    "{arch} slice at {start:#x}+{size:#x} lies outside the file ({len:#x} bytes) \
                     or overlaps the universal header"
                ),
            );
            ok = false;
        }
        if align != need {
            ctx.push(
                if align < need {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                "fat",
                format!("{arch} slice alignment is 2^{align}; lipo uses 2^{need} (the page size)"),
            );
        }
        if align >= 32 || start % (1u64 << align.min(31)) != 0 || start % (1u64 << need) != 0 {
            ctx.error(
                "fat",
                format!(
                    "{arch} slice offset {start:#x} is not aligned to 2^{}",
                    align.max(need).min(31)
                ),
            );
        }
        if ok {
            slices.push((arch, cpusubtype, start, end));
        }
    }
    ctx.arch = None;
    let mut sorted = slices.clone();
    sorted.sort_by_key(|s| s.2);
    for w in sorted.windows(2) {
        if w[0].3 > w[1].2 {
            ctx.error(
                "fat",
                format!("the {} and {} slices overlap", w[0].0, w[1].0),
            );
        }
    }
    report.findings.append(&mut ctx.findings);
    for (arch, cpusubtype, start, end) in slices {
        let before = report.findings.len();
        // `start`/`end` were checked against the file length above.
        let data = bytes.get(start as usize..end as usize).unwrap_or(&[]);
        verify_slice(data, Some(arch), opts, report);
        let same_cpu = super::image::u32_at(data, 4).and_then(super::checks::arch_of) == Some(arch);
        let subtype_in_header = super::image::u32_at(data, 8);
        if same_cpu && subtype_in_header.is_some_and(|s| s != cpusubtype) {
            report.findings.insert(
                before,
                super::Finding {
                    severity: Severity::Error,
                    arch: Some(arch),
                    check: "fat",
                    message: format!(
                        "the universal header gives cpusubtype {cpusubtype:#x} but the slice's \
                         Mach-O header has {:#x}; rebuild the universal file with llvm-lipo",
                        subtype_in_header.unwrap_or(0)
                    ),
                },
            );
        }
    }
}
