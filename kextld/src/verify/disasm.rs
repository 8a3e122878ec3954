//! The x86_64 "no FPU/SIMD" check: the kernel does not save FPU, MMX or SSE state
//! around kext code, so one SSE/AVX/MMX/x87 instruction in a kext corrupts the
//! interrupted thread's registers.
//!
//! Only code is decoded: code sections are split at every function start
//! (symbols and `LC_FUNCTION_STARTS`), and the `LC_DATA_IN_CODE` ranges (jump
//! tables, literal pools among instructions) are cut out, so data is never
//! decoded as instructions; a section without either is decoded linearly.
//!
//! For prx's own kexts ([`super::Options::prx_rules`]) a finding is an error: prx
//! builds soft-float. For other kexts it is a warning: no loader refuses FPU/SIMD
//! code, but the x86_64 kernel does not save that state for kext code
//! (docs/kext-format.md, "FPU and SIMD"). Instructions are classified with iced-x86's CPUID feature
//! table and operand register classes, not by mnemonic.

use std::collections::{BTreeMap, BTreeSet};

use iced_x86::{
    CpuidFeature, Decoder, DecoderOptions, FastFormatter, Instruction, OpKind, Register,
};

use super::Severity;
use super::checks::Ctx;
use super::image::{Image, slice_at};

/// At most this many findings per function; the rest are counted.
const MAX_PER_FUNCTION: usize = 5;

/// What the kernel target must be built with; appended to each finding.
const ADVICE: &str = "the x86_64 kernel does not save FPU/SIMD state for kexts; build with the prx \
                      kernel target (soft-float)";

/// The CPUID features that mean FPU/SIMD register state, if `f` is one.
fn forbidden_feature(f: CpuidFeature) -> Option<&'static str> {
    use CpuidFeature as C;
    Some(match f {
        C::FPU | C::FPU287 | C::FPU287XL_ONLY | C::FPU387 | C::FPU387SL_ONLY | C::CYRIX_FPU => {
            "x87"
        }
        C::MMX | C::CYRIX_EMMI => "MMX",
        C::D3NOW | C::D3NOWEXT | C::CYRIX_D3NOW => "3DNow!",
        C::SSE | C::SSE2 | C::SSE3 | C::SSSE3 | C::SSE4_1 | C::SSE4_2 | C::SSE4A => "SSE",
        C::AES | C::PCLMULQDQ | C::SHA | C::SHA512 | C::GFNI | C::SM3 | C::SM4 => "SSE",
        C::AVX | C::AVX2 | C::FMA | C::FMA4 | C::F16C | C::XOP | C::VAES | C::VPCLMULQDQ => "AVX",
        C::AVX_VNNI | C::AVX_IFMA | C::AVX_NE_CONVERT | C::AVX_VNNI_INT8 | C::AVX_VNNI_INT16 => {
            "AVX"
        }
        C::AVX512F
        | C::AVX512VL
        | C::AVX512BW
        | C::AVX512DQ
        | C::AVX512CD
        | C::AVX512ER
        | C::AVX512PF
        | C::AVX512_4FMAPS
        | C::AVX512_4VNNIW
        | C::AVX512_BF16
        | C::AVX512_BITALG
        | C::AVX512_IFMA
        | C::AVX512_VBMI
        | C::AVX512_VBMI2
        | C::AVX512_VNNI
        | C::AVX512_VP2INTERSECT
        | C::AVX512_VPOPCNTDQ
        | C::AVX512_FP16
        | C::KNC => "AVX-512",
        C::AMX_BF16 | C::AMX_TILE | C::AMX_INT8 | C::AMX_FP16 | C::AMX_COMPLEX => "AMX",
        _ => return None,
    })
}

/// The class of an FPU/SIMD register, if `r` is one.
fn forbidden_register(r: Register) -> Option<&'static str> {
    if r.is_xmm() {
        Some("SSE")
    } else if r.is_ymm() {
        Some("AVX")
    } else if r.is_zmm() || r.is_k() {
        Some("AVX-512")
    } else if r.is_mm() {
        Some("MMX")
    } else if r.is_st() {
        Some("x87")
    } else if r.is_tmm() {
        Some("AMX")
    } else {
        None
    }
}

/// Why `instr` touches FPU/SIMD state, if it does.
fn forbidden(instr: &Instruction) -> Option<&'static str> {
    if let Some(kind) = instr
        .cpuid_features()
        .iter()
        .find_map(|&f| forbidden_feature(f))
    {
        return Some(kind);
    }
    let mut regs = (0..instr.op_count())
        .filter(|&i| instr.op_kind(i) == OpKind::Register)
        .map(|i| instr.op_register(i))
        .chain([instr.memory_index(), instr.op_mask()]);
    regs.find_map(forbidden_register)
}

/// Reports every FPU/SIMD instruction in the image's code sections.
pub(super) fn check_no_simd(image: &Image<'_>, prx_rules: bool, ctx: &mut Ctx) {
    let mut formatter = FastFormatter::new();
    let severity = if prx_rules {
        Severity::Error
    } else {
        Severity::Warning
    };
    for f in functions(image) {
        check_function(f.bytes, f.start, &f.name, &mut formatter, severity, ctx);
    }
}

/// One stretch of code: from a symbol to the next one (or the section end).
struct Function<'a> {
    name: String,
    start: u64,
    bytes: &'a [u8],
}

/// The code of every instruction-bearing section, split at its symbols; bytes
/// before the first symbol (or a whole section without symbols) are named
/// `segment,section`.
fn functions<'a>(image: &Image<'a>) -> Vec<Function<'a>> {
    let mut out = Vec::new();
    let fn_starts = image.function_start_addrs();
    let data_in_code = image.data_in_code_ranges();
    for (index, sect) in image.sections.iter().enumerate() {
        if !sect.has_code() || sect.is_zerofill() || sect.size == 0 {
            continue;
        }
        let Some(code) = slice_at(image.data, sect.offset.into(), sect.size) else {
            continue; // reported by the segment checks
        };
        let ordinal = index + 1;
        // One start per address; the last (external) name wins.
        let mut starts: Vec<(u64, &str)> = Vec::new();
        for s in image.symbols_by_addr().iter().map(|&i| &image.symbols[i]) {
            if usize::from(s.n_sect) != ordinal || s.n_value < sect.addr || s.n_value >= sect.end()
            {
                continue;
            }
            match starts.last_mut() {
                Some(last) if last.0 == s.n_value => last.1 = s.name.as_str(),
                _ => starts.push((s.n_value, s.name.as_str())),
            }
        }
        // Function starts without a symbol of their own are named after the
        // preceding symbol (`name+offset`).
        let mut starts: Vec<(u64, String)> =
            starts.into_iter().map(|(a, n)| (a, n.to_owned())).collect();
        for a in &fn_starts {
            if *a >= sect.addr && *a < sect.end() && starts.iter().all(|s| s.0 != *a) {
                let name = match starts.iter().rev().find(|s| s.0 < *a) {
                    Some((b, n)) => format!("{n}+{:#x}", a - b),
                    None => format!("{}+{:#x}", sect.display(), a - sect.addr),
                };
                starts.push((*a, name));
            }
        }
        starts.sort();
        // Data-in-code ranges end a stretch; the code after one restarts it.
        let mut cuts: Vec<(u64, u64)> = data_in_code
            .iter()
            .copied()
            .filter(|&(s, e)| e > sect.addr && s < sect.end())
            .collect();
        cuts.sort();
        let mut ranges: Vec<(u64, u64, String)> = Vec::new();
        let mut push = |start: u64, end: u64, name: String| {
            let mut from = start;
            for &(s, e) in &cuts {
                if e <= from || s >= end {
                    continue;
                }
                if s > from {
                    ranges.push((from, s, name.clone()));
                }
                from = e.max(from);
            }
            if from < end {
                let name = if from == start {
                    name
                } else {
                    format!("{name}+{:#x}", from - start)
                };
                ranges.push((from, end, name));
            }
        };
        if starts.first().is_none_or(|s| s.0 > sect.addr) {
            let end = starts.first().map_or(sect.end(), |s| s.0);
            push(sect.addr, end, sect.display());
        }
        for (k, (start, name)) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(sect.end(), |s| s.0);
            push(*start, end, name.clone());
        }
        for (start, end, name) in ranges {
            let (Some(from), Some(len)) = (start.checked_sub(sect.addr), end.checked_sub(start))
            else {
                continue;
            };
            if let Some(bytes) = code
                .get(from as usize..)
                .and_then(|b| b.get(..len as usize))
            {
                out.push(Function { name, start, bytes });
            }
        }
    }
    out
}

/// For each address in `targets` (e.g. `__got` slots), the functions whose
/// RIP-relative memory operands refer to it.
pub(super) fn rip_relative_users(
    image: &Image<'_>,
    targets: &BTreeSet<u64>,
) -> BTreeMap<u64, BTreeSet<String>> {
    let mut users: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    if targets.is_empty() {
        return users;
    }
    let mut instr = Instruction::default();
    for f in functions(image) {
        let mut decoder = Decoder::with_ip(64, f.bytes, f.start, DecoderOptions::NONE);
        while decoder.can_decode() {
            decoder.decode_out(&mut instr);
            if instr.is_ip_rel_memory_operand() && targets.contains(&instr.ip_rel_memory_address())
            {
                users
                    .entry(instr.ip_rel_memory_address())
                    .or_default()
                    .insert(f.name.clone());
            }
        }
    }
    users
}

fn check_function(
    bytes: &[u8],
    start: u64,
    name: &str,
    formatter: &mut FastFormatter,
    severity: Severity,
    ctx: &mut Ctx,
) {
    let mut decoder = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut reported = 0usize;
    let mut more = 0usize;
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            continue;
        }
        let Some(kind) = forbidden(&instr) else {
            continue;
        };
        if reported == MAX_PER_FUNCTION {
            more += 1;
            continue;
        }
        reported += 1;
        let mut text = String::new();
        formatter.format(&instr, &mut text);
        let offset = instr.ip() - start;
        ctx.push(
            severity,
            "sse",
            format!(
                "{name}+{offset:#x} ({:#x}): `{text}` uses {kind}; {ADVICE}",
                instr.ip()
            ),
        );
    }
    if more > 0 {
        ctx.push(
            severity,
            "sse",
            format!("{name}: {more} more FPU/SIMD instructions not listed; {ADVICE}"),
        );
    }
}

/// The direct call graph of the code: for each function, the functions that
/// call or jump to it with a near relative branch (the only kind the linker
/// resolves inside a kext, so this is the whole static graph except calls
/// through pointers).
pub(super) fn callers(image: &Image<'_>) -> BTreeMap<String, BTreeSet<String>> {
    let funcs = functions(image);
    let owner = |addr: u64| {
        funcs
            .iter()
            .find(|f| addr >= f.start && addr - f.start < f.bytes.len() as u64)
            .map(|f| f.name.clone())
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut instr = Instruction::default();
    for f in &funcs {
        let mut decoder = Decoder::with_ip(64, f.bytes, f.start, DecoderOptions::NONE);
        while decoder.can_decode() {
            decoder.decode_out(&mut instr);
            let branch =
                instr.is_call_near() || instr.is_jmp_near() || instr.is_jcc_short_or_near();
            if !branch {
                continue;
            }
            if let Some(callee) = owner(instr.near_branch_target()).filter(|c| *c != f.name) {
                graph.entry(callee).or_default().insert(f.name.clone());
            }
        }
    }
    graph
}

/// The arm64 direct call graph: for each function, the functions that reach it
/// with `bl`/`b` (imm26), `b.cond`, `cbz`/`cbnz` (imm19) or `tbz`/`tbnz`
/// (imm14), decoding the code as 4-byte words from symbol to symbol (kexts
/// have no data in code). A call to a stub counts as a call to the stub
/// section, so the callers of a kernel function's stub are found through the
/// stub's address (see `arm64e::references`).
pub(super) fn arm64_callers(image: &Image<'_>) -> BTreeMap<String, BTreeSet<String>> {
    let funcs = functions(image);
    let owner = |addr: u64| {
        funcs
            .iter()
            .find(|f| addr >= f.start && addr - f.start < f.bytes.len() as u64)
            .map(|f| f.name.clone())
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &funcs {
        for (k, chunk) in f.bytes.chunks_exact(4).enumerate() {
            let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let pc = f.start + 4 * k as u64;
            let Some(target) = arm64_branch_target(pc, w) else {
                continue;
            };
            if let Some(callee) = owner(target).filter(|c| *c != f.name) {
                graph.entry(callee).or_default().insert(f.name.clone());
            }
        }
    }
    graph
}

/// The target of an arm64 pc-relative branch, if `w` is one.
fn arm64_branch_target(pc: u64, w: u32) -> Option<u64> {
    // Sign-extends the `bits`-bit field at `lsb`, times 4.
    let field = |lsb: u32, bits: u32| {
        let v = u64::from(w >> lsb) & ((1 << bits) - 1);
        let shift = 64 - bits;
        (((v << shift) as i64) >> (shift - 2)) as u64
    };
    let off = if w & 0x7C00_0000 == 0x1400_0000 {
        field(0, 26) // B, BL
    } else if w & 0xFF00_0010 == 0x5400_0000 || w & 0x7E00_0000 == 0x3400_0000 {
        field(5, 19) // B.cond; CBZ, CBNZ
    } else if w & 0x7E00_0000 == 0x3600_0000 {
        field(5, 14) // TBZ, TBNZ
    } else {
        return None;
    };
    Some(pc.wrapping_add(off))
}

/// Every function from which one of `targets` can be reached through direct
/// calls, split into roots (functions nothing in the kext calls directly:
/// entry points, callbacks) and the functions in between.
pub(super) fn reaching(
    graph: &BTreeMap<String, BTreeSet<String>>,
    targets: &BTreeSet<String>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut seen: BTreeSet<String> = targets.clone();
    let mut queue: Vec<String> = targets.iter().cloned().collect();
    while let Some(f) = queue.pop() {
        for caller in graph.get(&f).into_iter().flatten() {
            if seen.insert(caller.clone()) {
                queue.push(caller.clone());
            }
        }
    }
    seen.into_iter()
        .partition(|f| graph.get(f).is_none_or(|c| c.is_empty()))
}

/// A symbol name for people: Rust symbols demangled (without the hash).
pub(super) fn pretty(name: &str) -> String {
    let raw = name.strip_prefix('_').unwrap_or(name);
    match rustc_demangle::try_demangle(raw) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}
