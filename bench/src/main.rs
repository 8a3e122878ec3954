//! `prx-bench`: the hot paths of `common::net`, one case at a time, for
//! `cargo xtask bench`.
//!
//! ```text
//! prx-bench --list                         # name, iterations (low, high), baseline, description
//! prx-bench --case NAME --iterations N     # set up, self-check, run the operation N times, self-check
//! ```
//!
//! Each case builds its inputs, runs its operation once and checks the result
//! in depth (e.g. the rewritten packet's checksums by full recomputation),
//! then calls the operation `N` times inside [`measured`] and checks the last
//! result again, so a benchmark cannot silently measure a no-op. `cargo xtask
//! bench` runs the program under `valgrind --tool=callgrind` with collection
//! switched on only inside [`measured`] (`--toggle-collect=prx_bench::measured*`),
//! for a low and a high `N`, and reports `(Ir(high) − Ir(low)) / (high − low)`:
//! the instructions of one operation (plus the loop's few), with the set-up and
//! everything else cancelled out. No timing anywhere.

mod cases;
mod floor;
mod input;

use std::hint::black_box;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

/// The measured loop: `op(state, i)` for `i` in `0..iterations` (at least once);
/// returns the last result. The only function callgrind collects in (see the
/// crate docs): keep its name, and never inline it.
#[inline(never)]
pub fn measured<S, R>(state: &mut S, iterations: u64, mut op: impl FnMut(&mut S, u64) -> R) -> R {
    let mut last = black_box(op(black_box(&mut *state), 0));
    for i in 1..iterations {
        last = black_box(op(black_box(&mut *state), black_box(i)));
    }
    last
}

/// One benchmark case.
pub struct Case {
    /// `--case` name.
    pub name: &'static str,
    /// The iteration counts `cargo xtask bench` measures with (low, high).
    pub iterations: (u64, u64),
    /// The case this one is compared with (ratio = this ÷ baseline).
    pub baseline: Option<&'static str>,
    /// What one operation is.
    pub what: &'static str,
    /// Sets up, checks, runs [`measured`] with this many iterations, checks;
    /// returns a one-line summary of what was checked.
    pub run: fn(u64) -> Result<String>,
}

/// Stack of the thread a case runs on: the NAT tables are inline arrays of
/// several MB, and a debug build may build them on the stack first.
const STACK: usize = 256 << 20;

fn run_case(case: &'static Case, iterations: u64) -> Result<String> {
    let handle = std::thread::Builder::new()
        .name(case.name.to_owned())
        .stack_size(STACK)
        .spawn(move || (case.run)(iterations))
        .context("starting the case's thread")?;
    handle
        .join()
        .map_err(|_| anyhow!("case {} panicked", case.name))?
}

fn usage() -> &'static str {
    "usage: prx-bench --list | --case NAME --iterations N"
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prx-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut case = None;
    let mut iterations = None;
    let mut list = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => list = true,
            "--case" => case = Some(args.next().context("--case needs a NAME")?),
            "--iterations" => {
                let n = args.next().context("--iterations needs a number")?;
                iterations = Some(
                    n.parse::<u64>()
                        .with_context(|| format!("--iterations {n}: not a number"))?,
                );
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {}", usage()),
        }
    }
    if list {
        for c in cases::ALL {
            println!(
                "{}\t{}\t{}\t{}\t{}",
                c.name,
                c.iterations.0,
                c.iterations.1,
                c.baseline.unwrap_or("-"),
                c.what
            );
        }
        return Ok(());
    }
    let name = case.context(usage())?;
    let c = cases::ALL
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("no case {name:?} (--list lists them)"))?;
    let n = iterations.unwrap_or(c.iterations.0);
    if n == 0 {
        bail!("--iterations must be at least 1");
    }
    let summary = run_case(c, n)?;
    println!("{name}: {n} iterations, self-check ok: {summary}");
    Ok(())
}
