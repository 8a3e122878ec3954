//! Backend `emu`: an XNU KPI emulator that loads the shipped kext binary into
//! this process and drives it — the x86_64 slice on x86_64 Linux, the arm64e
//! slice (pointer authentication included) when built for aarch64 and run under
//! `qemu-aarch64 -cpu max`.
//!
//! Layers, bottom to top; a module imports only from its own layer or the
//! layers below (checked by the tidy test `emu_layers_import_only_downwards`;
//! ARCHITECTURE.md says why):
//!
//! 1. image — [`image`]: read the kext's Mach-O (universal or thin), safe;
//!    [`reloc`]: kxld's relocation rules as a pure function, safe; [`arch`]: the
//!    host-specific part — x86_64, or aarch64 under `qemu-aarch64 -cpu max`
//!    running the arm64e slice with pointer authentication (chained fixups, PAC
//!    signing, authenticated calls, signal contexts); [`loader`]: map, relocate,
//!    bind through jump stubs, call kmod start/stop — unsafe.
//! 2. kernel model — [`kernel`] and its modules `mbuf`, `sflt`, `ipf`, `ctl`,
//!    `packet`: the emulated kernel's state and ledgers; `events`: the event
//!    stream and the child's exit statuses; `fault`: the seedable
//!    fault-injection plan; `mt`: preemption points — all safe.
//! 3. [`abi`]: the host implementations of the KPIs and the calls into the
//!    kext's callbacks — unsafe (the trampoline layer).
//! 4. [`scenarios`]: what a run does, inside the child process.
//! 5. process — [`child`], [`runner`] and this module: one child process per
//!    scenario, with a time limit; fatal signals are reported with the faulting
//!    address mapped to a kext symbol.

pub mod abi;
pub mod arch;
pub mod child;
pub mod image;
pub mod kernel;
pub mod loader;
pub mod reloc;
pub mod runner;
pub mod scenarios;

pub use runner::{RunOptions, Runner, ScenarioReport, junit, run};
pub use scenarios::SCENARIOS;

use std::path::PathBuf;

/// Arguments of the child side, as the runner passes them.
#[derive(Debug, Default, Clone)]
pub struct ChildArgs {
    pub scenario: String,
    pub kexts: Vec<PathBuf>,
    pub faults: Option<String>,
    /// `--ctl-bridge PATH`: where the `ctl-bridge` scenario serves the kern_controls.
    pub ctl_bridge: Option<PathBuf>,
    /// `--serve-for SECS`: how long `ctl-bridge` serves without a `quit`
    /// (default 120 s; `cargo xtask emu-bridge` serves for hours).
    pub serve_for: Option<std::time::Duration>,
    /// `--soak PACKETS`: packets of the `soak` scenario.
    pub soak: Option<u64>,
    /// `--threads N`: threads of the `mt-*` and `soak` scenarios (default 4).
    pub threads: Option<usize>,
    /// `--transfer BYTES`: bytes each way of `nat-tcp4`/`nat-tcp6` (default 1 MiB).
    pub transfer: Option<usize>,
}

impl ChildArgs {
    /// Parses `--scenario S --kext K… [--faults F] [--ctl-bridge PATH] [--serve-for SECS]
    /// [--soak PACKETS] [--threads N] [--transfer BYTES]`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, String> {
        let mut out = ChildArgs::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--scenario" => out.scenario = value("--scenario")?,
                "--kext" => out.kexts.push(PathBuf::from(value("--kext")?)),
                "--faults" => out.faults = Some(value("--faults")?),
                "--ctl-bridge" => out.ctl_bridge = Some(PathBuf::from(value("--ctl-bridge")?)),
                "--serve-for" => {
                    let v = value("--serve-for")?;
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| format!("--serve-for {v}: not a number of seconds"))?;
                    out.serve_for = Some(std::time::Duration::from_secs(secs));
                }
                "--soak" => {
                    let v = value("--soak")?;
                    out.soak = Some(
                        v.parse()
                            .map_err(|_| format!("--soak {v}: not a number of packets"))?,
                    );
                }
                "--threads" => {
                    let v = value("--threads")?;
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("--threads {v}: not a number of threads"))?;
                    if !(1..=64).contains(&n) {
                        return Err(format!("--threads {v}: use 1 to 64"));
                    }
                    out.threads = Some(n);
                }
                "--transfer" => {
                    let v = value("--transfer")?;
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("--transfer {v}: not a number of bytes"))?;
                    if !(1024..=(64 << 20)).contains(&n) {
                        return Err(format!("--transfer {v}: use 1024 to 67108864 bytes"));
                    }
                    out.transfer = Some(n);
                }
                other => return Err(format!("unexpected argument `{other}`")),
            }
        }
        if out.scenario.is_empty() {
            return Err("--scenario is required".into());
        }
        Ok(out)
    }
}

/// The body of a scenario child process; returns its exit status. Call it from
/// a binary's `main` when the runner starts that binary as a child.
pub fn child_main(args: &ChildArgs) -> i32 {
    child::stream_events_to_stdout();
    child::install_fault_handler();
    let plan = match args
        .faults
        .as_deref()
        .map(kernel::fault::FaultPlan::parse)
        .transpose()
    {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("{e}");
            return child::EXIT_SETUP;
        }
    };
    scenarios::ctl_bridge::set_path(args.ctl_bridge.clone());
    let d = scenarios::soak::args();
    scenarios::soak::set_args(scenarios::soak::SoakArgs {
        packets: args.soak.unwrap_or(d.packets),
        threads: args.threads.unwrap_or(d.threads),
    });
    if let Some(d) = args.serve_for {
        scenarios::ctl_bridge::set_serve_for(d);
    }
    if let Some(n) = args.transfer {
        scenarios::stacks::set_transfer(n);
    }
    match scenarios::run(&args.scenario, &args.kexts, plan) {
        Ok(_) => child::EXIT_DONE,
        Err(e) => {
            eprintln!("{e}");
            child::EXIT_SETUP
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ChildArgs;

    fn parse(args: &[&str]) -> Result<ChildArgs, String> {
        ChildArgs::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn transfer_is_a_byte_count_in_range_and_names_itself_when_not() {
        let a = parse(&["--scenario", "nat-tcp4", "--transfer", "524288"]).unwrap();
        assert_eq!(a.transfer, Some(524_288));
        assert_eq!(parse(&["--scenario", "nat-tcp4"]).unwrap().transfer, None);
        let e = parse(&["--scenario", "nat-tcp4", "--transfer", "1k"]).unwrap_err();
        assert!(e.contains("--transfer 1k: not a number of bytes"), "{e}");
        let e = parse(&["--scenario", "nat-tcp4", "--transfer", "100"]).unwrap_err();
        assert!(e.contains("use 1024 to 67108864"), "{e}");
        let e = parse(&["--scenario", "nat-tcp4", "--transfer"]).unwrap_err();
        assert!(e.contains("--transfer needs a value"), "{e}");
    }
}
