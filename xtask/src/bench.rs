//! `cargo xtask bench`: instruction counts of `common::net`'s hot paths.
//!
//! Method: the `prx-bench` program (crate `bench/`, release build) runs one
//! case per process: it sets the case up, checks it, calls the operation `N`
//! times inside `prx_bench::measured` (never inlined; inputs and results pass
//! through `black_box`) and checks the result. Each case runs under
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect=prx_bench::measured*`, so only the instructions executed
//! inside that function (and what it calls) are counted, once with a low and
//! once with a high `N`; instructions per operation are
//! `(Ir(high) − Ir(low)) / (high − low)`, which cancels everything outside the
//! loop's body. What remains is the operation plus a few instructions of loop
//! and `black_box`. Instruction counts are deterministic (the inputs are
//! generated from fixed seeds), so one run per count is enough; they are
//! counts, not time: cache misses and branch mispredictions are not in them.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::toolchain;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Case to run; repeat for several (default: all). A compared case also runs
    /// its baseline. `--case list` lists the cases.
    #[arg(long = "case", value_name = "NAME")]
    pub cases: Vec<String>,
    /// Also write the results to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Instead: prxd side by side with haproxy (throughput and memory per idle
    /// connection on loopback; `prxd/examples/vs_haproxy.rs`).
    #[arg(long)]
    pub proxy: bool,
    /// With --proxy: idle connections to hold (each proxy needs two descriptors per connection).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub idle: usize,
    /// Skip the emulator run of the shipped IP filter (kext-only instructions
    /// and kernel calls per packet; it runs only without --case).
    #[arg(long)]
    pub no_emu: bool,
    /// The emulator part measures this PrxIPFilter bundle instead of building
    /// the release one (e.g. an older build, for a before/after comparison).
    #[arg(long, value_name = "BUNDLE")]
    pub kext: Option<PathBuf>,
}

/// `cargo xtask bench --proxy`: builds prxd and the comparison in release and runs it.
fn run_proxy(root: &Path, idle: usize) -> Result<()> {
    eprintln!("bench: building prxd and prxd/examples/vs_haproxy (release)");
    let st = toolchain::clean_cargo(root)
        .args([
            "build",
            "--release",
            "-p",
            "prxd",
            "--bin",
            "prxd",
            "--example",
            "vs_haproxy",
        ])
        .status()
        .context("running cargo build")?;
    ensure!(st.success(), "cargo build -p prxd --release failed");
    let dir = root.join("target/release");
    let st = Command::new(dir.join("examples/vs_haproxy"))
        .arg("--prxd")
        .arg(dir.join("prxd"))
        .args(["--idle", &idle.to_string()])
        .status()
        .context("running vs_haproxy (needs haproxy: `cargo xtask test` installs it)")?;
    ensure!(st.success(), "vs_haproxy failed");
    Ok(())
}

/// The function callgrind collects in (a pattern: the generic instances have
/// hash suffixes).
pub const MEASURED: &str = "prx_bench::measured*";

/// The bench package and binary.
const PACKAGE: &str = "prx-bench";

/// A case as `prx-bench --list` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseInfo {
    /// `--case` name.
    pub name: String,
    /// Low iteration count.
    pub low: u64,
    /// High iteration count.
    pub high: u64,
    /// The case this one is compared with.
    pub baseline: Option<String>,
    /// What one operation is.
    pub what: String,
}

/// One measured case.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The case.
    pub case: CaseInfo,
    /// Instructions collected with `low` and `high` iterations.
    pub ir: (u64, u64),
    /// Instructions per operation.
    pub per_op: f64,
    /// `per_op` ÷ the baseline's, when the case has one.
    pub ratio: Option<f64>,
    /// The case's self-check summary (`prx-bench`'s last line, after "self-check ok: ").
    pub checked: String,
}

/// Parses `prx-bench --list`: `name \t low \t high \t baseline|- \t what` per line.
pub fn parse_list(text: &str) -> Result<Vec<CaseInfo>> {
    let mut cases = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.splitn(5, '\t').collect();
        let [name, low, high, baseline, what] = f.as_slice() else {
            bail!("prx-bench --list: bad line {line:?}");
        };
        let low: u64 = low.parse().with_context(|| format!("bad line {line:?}"))?;
        let high: u64 = high.parse().with_context(|| format!("bad line {line:?}"))?;
        ensure!(0 < low && low < high, "bad iteration counts in {line:?}");
        cases.push(CaseInfo {
            name: (*name).to_owned(),
            low,
            high,
            baseline: (*baseline != "-").then(|| (*baseline).to_owned()),
            what: (*what).to_owned(),
        });
    }
    ensure!(!cases.is_empty(), "prx-bench --list listed no cases");
    Ok(cases)
}

/// The total instruction count of a callgrind output file (`totals:`, else
/// `summary:`; the first event is Ir).
pub fn parse_totals(out: &str) -> Result<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("totals:"))
        .or_else(|| out.lines().find(|l| l.starts_with("summary:")))
        .context("no totals: or summary: line in the callgrind output")?;
    let n = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no count in {line:?}"))?;
    n.parse()
        .with_context(|| format!("bad count in callgrind's {line:?}"))
}

/// Instructions per operation from the two counts.
pub fn per_op(case: &CaseInfo, ir_low: u64, ir_high: u64) -> Result<f64> {
    ensure!(
        ir_low > 0,
        "callgrind collected nothing inside {MEASURED} for {}: was the function renamed or inlined?",
        case.name
    );
    ensure!(
        ir_high > ir_low,
        "{}: {} instructions with {} iterations but {} with {}",
        case.name,
        ir_high,
        case.high,
        ir_low,
        case.low
    );
    Ok((ir_high - ir_low) as f64 / (case.high - case.low) as f64)
}

/// Fills in each case's ratio to its baseline (when that was measured).
pub fn ratios(results: &mut [Measured]) {
    let per_op: Vec<(String, f64)> = results
        .iter()
        .map(|m| (m.case.name.clone(), m.per_op))
        .collect();
    for m in results.iter_mut() {
        m.ratio = m.case.baseline.as_ref().and_then(|b| {
            per_op
                .iter()
                .find(|(n, _)| n == b)
                .filter(|(_, base)| *base > 0.0)
                .map(|(_, base)| m.per_op / base)
        });
    }
}

/// `valgrind --version`, or an error naming the package to install.
fn valgrind_version() -> Result<String> {
    let out = match Command::new("valgrind").arg("--version").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "valgrind not found on PATH: `cargo xtask bench` counts instructions with callgrind; \
             install the `valgrind` package (Debian/Ubuntu: apt-get install valgrind)"
        ),
        Err(e) => return Err(e).context("running valgrind --version"),
    };
    ensure!(
        out.status.success(),
        "valgrind --version failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds `prx-bench` in release and returns the executable's path.
fn build_bench(root: &Path) -> Result<PathBuf> {
    build_bin(root, &["--release"], PACKAGE, PACKAGE)
}

/// Builds binary `bin` of `package` (cargo `extra` arguments) and returns the
/// executable's path.
fn build_bin(root: &Path, extra: &[&str], package: &str, bin: &str) -> Result<PathBuf> {
    let mut child = toolchain::clean_cargo(root)
        .arg("build")
        .args(extra)
        .args(["-p", package, "--bin", bin])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting cargo build -p {package}"))?;
    let stdout = child.stdout.take().context("cargo build: no stdout")?;
    let mut exe = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == bin
            && let Some(e) = msg["executable"].as_str()
        {
            exe = Some(PathBuf::from(e));
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    ensure!(
        status.success(),
        "cargo build -p {package} failed (see above)"
    );
    exe.with_context(|| format!("cargo build reported no {bin} executable"))
}

fn list_cases(bin: &Path) -> Result<Vec<CaseInfo>> {
    let out = Command::new(bin)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", bin.display()))?;
    ensure!(
        out.status.success(),
        "prx-bench --list failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_list(&String::from_utf8_lossy(&out.stdout))
}

/// Runs `case` with `iterations` under callgrind; returns the instructions
/// collected inside [`MEASURED`] and the case's self-check summary.
fn callgrind(bin: &Path, dir: &Path, case: &str, iterations: u64) -> Result<(u64, String)> {
    let out_file = dir.join(format!("{case}-{iterations}.callgrind"));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={MEASURED}"))
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(bin)
        .args(["--case", case, "--iterations", &iterations.to_string()])
        .output()
        .context("running valgrind")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("self-check ok") {
        bail!(
            "{case} with {iterations} iterations failed under callgrind ({}):\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let checked = stdout
        .split_once("self-check ok: ")
        .map(|(_, s)| s.trim().to_owned())
        .unwrap_or_default();
    let total = parse_totals(&text).with_context(|| format!("{}", out_file.display()))?;
    Ok((total, checked))
}

/// The cases to run: `wanted` (all when empty) plus their baselines, in list order.
fn select(all: &[CaseInfo], wanted: &[String]) -> Result<Vec<CaseInfo>> {
    if wanted.is_empty() {
        return Ok(all.to_vec());
    }
    let mut names: Vec<&str> = Vec::new();
    for w in wanted {
        let c = all.iter().find(|c| &c.name == w).with_context(|| {
            let known: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            format!("no case {w:?}; cases: {}", known.join(", "))
        })?;
        names.push(&c.name);
        if let Some(b) = &c.baseline {
            names.push(b);
        }
    }
    Ok(all
        .iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .cloned()
        .collect())
}

/// The results as a table.
pub fn table(results: &[Measured]) -> String {
    let mut s = format!("{:<22} {:>16}   {}\n", "case", "instructions/op", "ratio");
    for m in results {
        let ratio = match (m.ratio, &m.case.baseline) {
            (Some(r), Some(b)) => format!("{r:.1}× {b}"),
            _ => String::new(),
        };
        let line = format!("{:<22} {:>16.1}   {ratio}", m.case.name, m.per_op);
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// IPv6 against IPv4 for each path measured in both families (`<path>-v6`
/// ÷ `<path>-v4`).
pub fn family_ratios(results: &[Measured]) -> Vec<(String, f64)> {
    let per_op = |name: &str| {
        results
            .iter()
            .find(|m| m.case.name == name)
            .map(|m| m.per_op)
    };
    results
        .iter()
        .filter_map(|m| {
            let path = m.case.name.strip_suffix("-v6")?;
            let v4 = per_op(&format!("{path}-v4")).filter(|v| *v > 0.0)?;
            Some((path.to_owned(), m.per_op / v4))
        })
        .collect()
}

fn to_json(results: &[Measured], valgrind: &str) -> serde_json::Value {
    serde_json::json!({
        "method": format!(
            "valgrind --tool=callgrind --collect-atstart=no --toggle-collect={MEASURED}; \
             instructions_per_op = (Ir(high) - Ir(low)) / (high - low)"
        ),
        "valgrind": valgrind,
        "cases": results.iter().map(|m| serde_json::json!({
            "name": m.case.name,
            "what": m.case.what,
            "iterations": [m.case.low, m.case.high],
            "instructions": [m.ir.0, m.ir.1],
            "instructions_per_op": m.per_op,
            "baseline": m.case.baseline,
            "ratio": m.ratio,
            "checked": m.checked,
        })).collect::<Vec<_>>(),
    })
}

/// The emulator part (see [`crate::bench_emu`]): builds the release IP filter
/// bundle and the emulator, runs `nat-tcp4` and `nat-tcp6` under callgrind and
/// prints the per-packet figures (and their ratio to the floor).
fn emulator(
    root: &Path,
    dir: &Path,
    floor: Option<f64>,
    given: Option<&Path>,
) -> Result<Vec<EmuRun>> {
    let kext = match given {
        Some(k) => {
            ensure!(k.exists(), "--kext {}: no such bundle", k.display());
            k.to_path_buf()
        }
        None => {
            eprintln!(
                "bench: building the release IP filter (cargo xtask build --release --kext ip)"
            );
            let built = crate::build::build(
                root,
                &crate::build::BuildOptions {
                    release: true,
                    archs: vec![],
                    kexts: vec!["ip".into()],
                    target_dir: None,
                },
            )?;
            built
                .iter()
                .find(|b| b.crate_name == "kext-ip")
                .context("the build wrote no kext-ip bundle")?
                .path
                .clone()
        }
    };
    eprintln!("bench: building the emulator (prx-emu)");
    let emu = build_bin(root, &[], "vm", "prx-emu")?;
    let mut out = Vec::new();
    println!();
    println!(
        "emulator: {} (x86_64 slice), per packet callback (ipf_output and ipf_input alike)",
        kext.display()
    );
    println!(
        "{:<10} {:>9} {:>17} {:>12} {:>16} {:>16} {:>14}",
        "scenario",
        "callbacks",
        "per packet (run)",
        "ratio",
        "tracked output",
        "tracked input",
        "kernel calls"
    );
    let mut tracked = Vec::new();
    for scenario in ["nat-tcp4", "nat-tcp6"] {
        eprintln!(
            "bench: emulator {scenario} under callgrind ({} and {} bytes each way)",
            TRANSFER_LOW, TRANSFER_HIGH
        );
        let lo = crate::bench_emu::run(&emu, &kext, scenario, TRANSFER_LOW, dir)?;
        let c = crate::bench_emu::run(&emu, &kext, scenario, TRANSFER_HIGH, dir)?;
        let per = c.kext_instructions as f64 / c.callbacks as f64;
        let (out_t, in_t) = (
            crate::bench_emu::marginal(&lo.output, &c.output)
                .context("the two runs differ in no output callback")?,
            crate::bench_emu::marginal(&lo.input, &c.input)
                .context("the two runs differ in no input callback")?,
        );
        tracked.push((out_t, in_t));
        let calls = c.kernel_calls_total() as f64 / c.callbacks as f64;
        let ratio = |x: f64| {
            floor
                .filter(|f| *f > 0.0)
                .map(|f| format!("{:.1}× floor", x / f))
                .unwrap_or_default()
        };
        let dir = |x: f64| match floor.filter(|f| *f > 0.0) {
            Some(f) => format!("{x:.1} ({:.2}×)", x / f),
            None => format!("{x:.1}"),
        };
        println!(
            "{scenario:<10} {:>9} {per:>17.1} {:>12} {:>16} {:>16} {calls:>14.2}",
            c.callbacks,
            ratio(per),
            dir(out_t),
            dir(in_t),
        );
        println!(
            "{:<10} the whole run by direction: output {:.1}, input {:.1} per packet",
            "",
            c.output.per_packet(),
            c.input.per_packet()
        );
        // KPIs called at least once per 100 packets (the rest is start and control).
        let each: Vec<String> = c
            .kernel_calls
            .iter()
            .map(|(k, n)| (k, *n as f64 / c.callbacks as f64))
            .filter(|(_, per)| *per >= 0.01)
            .map(|(k, per)| format!("{k} {per:.2}"))
            .collect();
        println!("{:<10} per packet: {}", "", each.join(", "));
        out.push(EmuRun {
            scenario: scenario.to_owned(),
            counts: c,
            tracked: (out_t, in_t),
        });
    }
    if let [(o4, i4), (o6, i6)] = tracked[..] {
        println!(
            "{:<10} tracked IPv6 against IPv4: output {:.2}×, input {:.2}×",
            "",
            o6 / o4,
            i6 / i4
        );
    }
    println!(
        "(kext instructions: the functions the packet callbacks reach. Per packet (run): the \
         {TRANSFER_HIGH}-byte run's average, its flow's set-up, close and log line included. \
         Tracked: what the {TRANSFER_HIGH}-byte run adds over the {TRANSFER_LOW}-byte one, per \
         packet added, each direction: a tracked flow's packets. Kernel calls: the whole \
         {TRANSFER_HIGH}-byte run, start and control included)"
    );
    Ok(out)
}

/// One emulator scenario's figures: the larger run's counts and the tracked
/// flow's per-packet cost (output, input).
struct EmuRun {
    scenario: String,
    counts: crate::bench_emu::Counts,
    tracked: (f64, f64),
}

/// The two transfer sizes (bytes each way) of the emulator runs: their
/// difference is a tracked flow's packets alone.
const TRANSFER_LOW: usize = 512 << 10;
const TRANSFER_HIGH: usize = 1 << 20;

/// Runs `cargo xtask bench`.
pub fn run(root: &Path, args: Args) -> Result<()> {
    if args.proxy {
        return run_proxy(root, args.idle);
    }
    let valgrind = valgrind_version()?;
    let bin = build_bench(root)?;
    let all = list_cases(&bin)?;
    if args.cases.iter().any(|c| c == "list") {
        for c in &all {
            println!("{:<22} {}", c.name, c.what);
        }
        return Ok(());
    }
    let cases = select(&all, &args.cases)?;
    let dir = tempfile::tempdir().context("creating a directory for callgrind's output")?;
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for c in cases {
        eprintln!(
            "bench: {} ({} and {} iterations under callgrind)",
            c.name, c.low, c.high
        );
        let (low, _) = callgrind(&bin, dir.path(), &c.name, c.low)?;
        let (high, checked) = callgrind(&bin, dir.path(), &c.name, c.high)?;
        let per_op = per_op(&c, low, high)?;
        results.push(Measured {
            case: c,
            ir: (low, high),
            per_op,
            ratio: None,
            checked,
        });
    }
    ratios(&mut results);
    eprintln!(
        "bench: {} case(s) in {:.1}s ({valgrind})",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    print!("{}", table(&results));
    for (path, r) in family_ratios(&results) {
        println!("{path}: IPv6 {r:.2}× IPv4");
    }
    println!();
    for m in &results {
        println!("{:<22} {}", m.case.name, m.case.what);
        if !m.checked.is_empty() {
            println!("{:<22}   checked: {}", "", m.checked);
        }
    }
    let floor = results
        .iter()
        .find(|m| m.case.name == "floor")
        .map(|m| m.per_op);
    let emu = if args.no_emu || !args.cases.is_empty() {
        Vec::new()
    } else {
        emulator(root, dir.path(), floor, args.kext.as_deref())?
    };
    if let Some(path) = &args.json {
        let mut j = to_json(&results, &valgrind);
        j["emulator"] = serde_json::json!(
            emu.iter()
                .map(
                    |EmuRun {
                         scenario,
                         counts: c,
                         tracked: (out_t, in_t),
                     }| serde_json::json!({
                        "scenario": scenario,
                        "callbacks": c.callbacks,
                        "kext_instructions": c.kext_instructions,
                        "kext_instructions_with_start_and_control": c.kext_instructions_all,
                        "tracked_per_packet": {
                            "output": out_t,
                            "input": in_t,
                            "transfer_bytes": [TRANSFER_LOW, TRANSFER_HIGH],
                        },
                        "output": {
                            "callbacks": c.output.callbacks,
                            "kext_instructions": c.output.kext_instructions,
                        },
                        "input": {
                            "callbacks": c.input.callbacks,
                            "kext_instructions": c.input.kext_instructions,
                        },
                        "kernel_calls": c.kernel_calls,
                    })
                )
                .collect::<Vec<_>>()
        );
        let text = serde_json::to_string_pretty(&j).context("serialising the results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, low: u64, high: u64, baseline: Option<&str>) -> CaseInfo {
        CaseInfo {
            name: name.into(),
            low,
            high,
            baseline: baseline.map(Into::into),
            what: "w".into(),
        }
    }

    #[test]
    fn lists_totals_and_ratios_are_parsed_and_computed() -> Result<()> {
        let list = parse_list("a\t10\t110\t-\tthe a case\nb\t1\t2\ta\twith\ttabs\n")?;
        assert_eq!(list[0], case("a", 10, 110, None).with_what("the a case"));
        assert_eq!(list[1], case("b", 1, 2, Some("a")).with_what("with\ttabs"));
        assert!(parse_list("a\t10\t10\t-\tx").is_err());
        assert!(parse_list("a\t10\t110\t-").is_err());
        assert!(parse_list("").is_err());

        let out = "version: 1\ncmd: x\nevents: Ir\nsummary: 1500\nfn=(1) f\n0 1\ntotals: 1500\n";
        assert_eq!(parse_totals(out)?, 1500);
        assert_eq!(parse_totals("events: Ir\nsummary: 7\n")?, 7);
        assert!(parse_totals("events: Ir\n").is_err());

        let a = case("a", 10, 110, None);
        assert_eq!(per_op(&a, 1_000, 21_000)?, 200.0);
        assert!(per_op(&a, 0, 0).is_err(), "nothing collected");
        assert!(per_op(&a, 5, 5).is_err());

        let mut results = vec![
            Measured {
                case: a,
                ir: (0, 0),
                per_op: 200.0,
                ratio: None,
                checked: String::new(),
            },
            Measured {
                case: case("b", 1, 2, Some("a")),
                ir: (0, 0),
                per_op: 5_000.0,
                ratio: None,
                checked: String::new(),
            },
        ];
        ratios(&mut results);
        assert_eq!(results[0].ratio, None);
        assert_eq!(results[1].ratio, Some(25.0));
        let t = table(&results);
        assert!(t.contains("25.0× a"), "{t}");
        assert!(family_ratios(&results).is_empty());
        let j = to_json(&results, "valgrind-3.19.0");
        assert_eq!(j["cases"][1]["ratio"], 25.0);
        Ok(())
    }

    #[test]
    fn selecting_a_compared_case_also_runs_its_baseline() -> Result<()> {
        let all = vec![
            case("a", 1, 2, None),
            case("b", 1, 2, Some("a")),
            case("c", 1, 2, None),
        ];
        let names = |v: Vec<CaseInfo>| v.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(select(&all, &[])?), ["a", "b", "c"]);
        assert_eq!(names(select(&all, &["b".into()])?), ["a", "b"]);
        assert_eq!(names(select(&all, &["c".into()])?), ["c"]);
        assert!(select(&all, &["nope".into()]).is_err());
        Ok(())
    }

    impl CaseInfo {
        fn with_what(mut self, w: &str) -> Self {
            self.what = w.into();
            self
        }
    }
}
