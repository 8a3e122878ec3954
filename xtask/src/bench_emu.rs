//! `cargo xtask bench`'s emulator part: the shipped PrxIPFilter binary (the
//! release bundle's x86_64 slice, as `cargo xtask build --release` writes it)
//! driven by the KPI emulator's `nat-tcp4`/`nat-tcp6` scenarios under
//! `valgrind --tool=callgrind --dump-instr=yes`.
//!
//! The emulator maps the kext at an address it reports (`"ev":"loaded"`:
//! `base`, `size`, and the jump stubs its undefined symbols are bound through,
//! `stubs`, 16 bytes each, in `stub_symbols` order). From callgrind's
//! per-instruction costs:
//! - kext-only instructions: instructions executed at addresses inside the
//!   kext's image (the kernel's side, the emulator's KPI implementations, is
//!   outside), in the kext functions reachable from the packet callbacks
//!   (callgrind's call graph from the emulator's `call_ipf` into the image):
//!   start (which fills the NAT tables), stop and the control are left out;
//! - kernel calls: calls from an instruction inside the image to a stub, each
//!   stub naming the KPI;
//! - packets: the calls the emulator's `call_ipf` makes into the image (one per
//!   `ipf_output`/`ipf_input` callback).
//!
//! A kext function both the packet path and the control reach (a lock, a
//! helper) counts whole, so the per-packet figures may overstate the packet
//! path by the control's few calls; kernel calls count from the whole run (the
//! start's and control's are a few in a thousand packets).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// What the emulator reports of the loaded kext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Load address and size of the image.
    pub base: u64,
    pub size: u64,
    /// Address of the first stub.
    pub stubs: u64,
    /// The symbol each stub is bound to.
    pub stub_symbols: Vec<String>,
}

/// Stub size in the emulator's loader.
const STUB_SIZE: u64 = 16;

/// The `"ev":"loaded"` event of the kext named `kext` in the child's output.
pub fn parse_loaded(out: &str, kext: &str) -> Result<Image> {
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["ev"] != "loaded" || v["kext"] != kext {
            continue;
        }
        let num = |k: &str| {
            v[k].as_u64()
                .with_context(|| format!("loaded event without {k}: {line}"))
        };
        let syms = v["stub_symbols"]
            .as_array()
            .context("loaded event without stub_symbols")?
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .context("stub symbol not a string")
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(Image {
            base: num("base")?,
            size: num("size")?,
            stubs: num("stubs")?,
            stub_symbols: syms,
        });
    }
    bail!("the emulator reported no loaded event for {kext}")
}

/// The counts of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Instructions executed inside the image by the functions the packet
    /// callbacks reach.
    pub kext_instructions: u64,
    /// Instructions executed inside the image, start and control included.
    pub kext_instructions_all: u64,
    /// Calls from `call_ipf` into the image.
    pub callbacks: u64,
    /// Calls from the image to each KPI.
    pub kernel_calls: BTreeMap<String, u64>,
    /// The output callbacks (`ipf_output`) alone.
    pub output: Direction,
    /// The input callbacks (`ipf_input`) alone.
    pub input: Direction,
}

/// One direction's callbacks: how many, and the instructions of the kext
/// functions they reach (a function both directions reach counts in each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Direction {
    pub callbacks: u64,
    pub kext_instructions: u64,
}

impl Direction {
    /// Kext instructions per callback (0 without callbacks).
    pub fn per_packet(&self) -> f64 {
        if self.callbacks == 0 {
            0.0
        } else {
            self.kext_instructions as f64 / self.callbacks as f64
        }
    }
}

impl Counts {
    pub fn kernel_calls_total(&self) -> u64 {
        self.kernel_calls.values().sum()
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Parses a callgrind file written with `--dump-instr=yes --dump-line=no
/// --compress-pos=no --compress-strings=no`: cost lines `0xADDR COST`, call
/// lines `calls=N 0xTARGET` followed by the calling instruction's line (whose
/// cost is the call's inclusive cost, not the instruction's own).
/// `outputs`: the offsets in the image of the output callbacks' entries
/// ([`callback_entries`]); every other callback entry is an input one.
pub fn parse_callgrind(text: &str, img: &Image, outputs: &[u64]) -> Result<Counts> {
    let inside = |a: u64| a >= img.base && a < img.base.saturating_add(img.size);
    let stubs_end = img
        .stubs
        .saturating_add(STUB_SIZE * img.stub_symbols.len() as u64);
    let mut c = Counts::default();
    let mut func = String::new();
    let mut callee = String::new();
    let mut pending_call: Option<(u64, u64)> = None;
    // Own instructions inside the image per callgrind function, the call
    // graph, and the kext functions the packet callbacks enter.
    let mut own: BTreeMap<String, u64> = BTreeMap::new();
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut roots: Vec<String> = Vec::new();
    // Callbacks per entry (by target address).
    let mut entries: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("fn=") {
            func = f.to_owned();
            continue;
        }
        if let Some(f) = line.strip_prefix("cfn=") {
            callee = f.to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("calls=") {
            let mut it = rest.split_whitespace();
            let n: u64 = it
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("bad calls line {line:?}"))?;
            let target = it.next().and_then(hex).unwrap_or(0);
            pending_call = Some((n, target));
            continue;
        }
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let Some(addr) = hex(first) else { continue };
        if let Some((n, target)) = pending_call.take() {
            edges.entry(func.clone()).or_default().push(callee.clone());
            if inside(addr) && target >= img.stubs && target < stubs_end {
                let i = usize::try_from((target - img.stubs) / STUB_SIZE)?;
                let name = img.stub_symbols.get(i).cloned().unwrap_or_default();
                let name = name.strip_prefix('_').unwrap_or(&name).to_owned();
                *c.kernel_calls.entry(name).or_default() += n;
            } else if !inside(addr) && inside(target) && func.contains("call_ipf") {
                c.callbacks += n;
                roots.push(callee.clone());
                let e = entries.entry(target).or_insert_with(|| (callee.clone(), 0));
                e.1 += n;
            }
            continue;
        }
        if inside(addr) {
            let cost: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("bad cost line {line:?}"))?;
            c.kext_instructions_all += cost;
            *own.entry(func.clone()).or_default() += cost;
        }
    }
    // Every function reachable from the callbacks' entries (through kext code
    // only: a kernel function does not call back into the kext here).
    let reached = |roots: Vec<String>| {
        let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut stack = roots;
        while let Some(f) = stack.pop() {
            if !own.contains_key(&f) || !seen.insert(f.clone()) {
                continue;
            }
            stack.extend(edges.get(&f).into_iter().flatten().cloned());
        }
        seen.iter().filter_map(|f| own.get(f)).sum::<u64>()
    };
    c.kext_instructions = reached(roots);
    for out in [true, false] {
        let (names, calls): (Vec<String>, Vec<u64>) = entries
            .iter()
            .filter(|(a, _)| outputs.contains(&a.wrapping_sub(img.base)) == out)
            .map(|(_, (name, n))| (name.clone(), *n))
            .unzip();
        let d = Direction {
            callbacks: calls.iter().sum(),
            kext_instructions: reached(names),
        };
        if out {
            c.output = d;
        } else {
            c.input = d;
        }
    }
    ensure!(
        c.kext_instructions > 0 && c.callbacks > 0,
        "callgrind saw no instruction of the kext or no packet callback (was the image \
         at {:#x}+{:#x}?)",
        img.base,
        img.size
    );
    Ok(c)
}

/// A tracked flow's kext instructions per packet in one direction: what the
/// larger of two runs of the same scenario (`hi`, more bytes each way) added
/// over the smaller (`lo`), per callback added. The flow's set-up (rules,
/// insertion, its log line), its close and the start cancel out; `None` when
/// the runs do not differ in callbacks.
pub fn marginal(lo: &Direction, hi: &Direction) -> Option<f64> {
    let calls = hi.callbacks.checked_sub(lo.callbacks).filter(|n| *n > 0)?;
    let instr = hi.kext_instructions.checked_sub(lo.kext_instructions)?;
    Some(instr as f64 / calls as f64)
}

/// The offsets in the image of the output callbacks' entries: the addresses
/// of the symbols naming `ipf::output_trampoline` in the x86_64 slice of the
/// kext's executable `binary` (a universal file or a thin one; the image is
/// mapped from address 0, as kextld links it).
pub fn callback_entries(binary: &Path) -> Result<Vec<u64>> {
    use object::read::macho::{FatArch, MachOFatFile32};
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let slice = match MachOFatFile32::parse(&*data) {
        Ok(fat) => {
            let arch = fat
                .arches()
                .iter()
                .find(|a| a.architecture() == object::Architecture::X86_64)
                .with_context(|| format!("{}: no x86_64 slice", binary.display()))?;
            arch.data(&*data)
                .with_context(|| format!("{}: the x86_64 slice", binary.display()))?
        }
        Err(_) => &data[..],
    };
    let file = object::File::parse(slice)
        .with_context(|| format!("{}: not a Mach-O file", binary.display()))?;
    let out: Vec<u64> = file
        .symbols()
        .filter(|s| s.name().is_ok_and(|n| n.contains("17output_trampoline")))
        .map(|s| s.address())
        .collect();
    ensure!(
        !out.is_empty(),
        "{}: no ipf output trampoline symbol (the bench splits output from input by it)",
        binary.display()
    );
    Ok(out)
}

/// Runs `scenario` with `kext` under callgrind, `transfer` bytes each way.
pub fn run(emu: &Path, kext: &Path, scenario: &str, transfer: usize, dir: &Path) -> Result<Counts> {
    let out_file = dir.join(format!("{scenario}-{transfer}.callgrind"));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .args([
            "--dump-instr=yes",
            "--dump-line=no",
            "--compress-pos=no",
            "--compress-strings=no",
        ])
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(emu)
        .args(["child", "--scenario", scenario, "--kext"])
        .arg(kext)
        .args(["--transfer", &transfer.to_string()])
        .output()
        .context("running valgrind")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed = stdout.lines().any(|l| l.contains("\"ok\":false"));
    if !out.status.success() || failed {
        bail!(
            "the emulator's {scenario} failed under callgrind ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let img = parse_loaded(&stdout, "net.prx.kext.IPFilter")?;
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let outputs = callback_entries(&kext.join("Contents/MacOS/PrxIPFilter"))?;
    parse_callgrind(&text, &img, &outputs).with_context(|| format!("{}", out_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kext_instructions_kernel_calls_and_callbacks_are_counted() -> Result<()> {
        let out = "{\"ev\":\"other\"}\n{\"ev\":\"loaded\",\"kext\":\"k\",\"base\":4096,\"size\":4096,\"stubs\":16384,\"stub_symbols\":[\"_a\",\"_mbuf_copydata\"]}\n";
        let img = parse_loaded(out, "k")?;
        assert_eq!(img.stubs, 16384);
        assert!(parse_loaded(out, "x").is_err());
        let cg = "\
fn=vm::emu::abi::net::call_ipf::{{closure}}
0x100 5
cfn=0x0000000000001000
calls=3 0x1000
0x104 900
fn=0x0000000000001000
0x1000 40
0x1004 2
cfn=stub
calls=3 0x4010
0x1008 300
cfn=0x0000000000001100
calls=1 0x1100
0x100c 10
fn=0x0000000000001100
0x1100 6
fn=vm::emu::arch::x86_64::call_kmod_entry
cfn=0x0000000000001200
calls=1 0x1200
0x300 1000
fn=0x0000000000001200
0x1200 500
fn=host
0x2000 7
";
        let c = parse_callgrind(cg, &img, &[0])?;
        assert_eq!(
            c.kext_instructions, 48,
            "own instructions of the functions the callbacks reach, not calls' inclusive costs"
        );
        assert_eq!(c.kext_instructions_all, 548, "start included");
        assert_eq!(
            c.output,
            Direction {
                callbacks: 3,
                kext_instructions: 48
            },
            "the entry at offset 0 is an output callback"
        );
        assert_eq!(c.input, Direction::default());
        let lo = Direction {
            callbacks: 100,
            kext_instructions: 50_000,
        };
        let hi = Direction {
            callbacks: 300,
            kext_instructions: 110_000,
        };
        assert_eq!(marginal(&lo, &hi), Some(300.0));
        assert_eq!(marginal(&hi, &lo), None);
        assert_eq!(marginal(&lo, &lo), None);
        let c = parse_callgrind(cg, &img, &[0x40])?;
        assert_eq!((c.output.callbacks, c.input.callbacks), (0, 3));
        assert_eq!(c.input.kext_instructions, 48);
        assert_eq!(c.callbacks, 3);
        assert_eq!(c.kernel_calls.get("mbuf_copydata"), Some(&3));
        assert_eq!(
            c.kernel_calls_total(),
            3,
            "calls inside the kext are not kernel calls"
        );
        Ok(())
    }
}
