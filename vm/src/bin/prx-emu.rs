//! `prx-emu`: the emu backend's own command.
//!
//! - `prx-emu run --scenario S --kext K… [--faults F] [--timeout SECS] [--soak PACKETS]
//!   [--threads N] [--transfer BYTES]`: run a scenario in a child process and print the report
//!   (exit 1 on failure).
//! - `prx-emu child --scenario S --kext K… [--faults F]`: the child side (used by `run`
//!   and by the tests).
//! - `prx-emu symbols`: list the KPI symbols the emulator provides.

use std::process::ExitCode;
use std::time::Duration;

use vm::emu;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    match cmd.as_str() {
        "child" => match emu::ChildArgs::parse(args) {
            Ok(a) => ExitCode::from(emu::child_main(&a) as u8),
            Err(e) => {
                eprintln!("prx-emu child: {e}");
                ExitCode::from(emu::child::EXIT_SETUP as u8)
            }
        },
        "run" => {
            let mut rest: Vec<String> = args.collect();
            let mut timeout = Duration::from_secs(20);
            if let Some(i) = rest.iter().position(|a| a == "--timeout") {
                let secs = rest
                    .get(i + 1)
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(20.0);
                timeout = Duration::from_secs_f64(secs);
                rest.drain(i..(i + 2).min(rest.len()));
            }
            let a = match emu::ChildArgs::parse(rest) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("prx-emu run: {e}");
                    return ExitCode::from(2);
                }
            };
            let exe = std::env::current_exe().unwrap_or_else(|_| "prx-emu".into());
            let mut child_args = vec!["child".to_string()];
            if let Some(n) = a.soak {
                child_args.extend(["--soak".into(), n.to_string()]);
            }
            if let Some(n) = a.threads {
                child_args.extend(["--threads".into(), n.to_string()]);
            }
            if let Some(n) = a.transfer {
                child_args.extend(["--transfer".into(), n.to_string()]);
            }
            let opts = emu::RunOptions {
                runner: emu::Runner {
                    program: exe,
                    args: child_args,
                },
                kexts: a.kexts,
                timeout,
                faults: a.faults,
            };
            let r = emu::run(&opts, &a.scenario);
            print!("{}", r.render());
            if r.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        "symbols" => {
            for (name, _) in emu::abi::symbols() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: prx-emu run|child --scenario NAME --kext PATH... [--faults PLAN] | prx-emu symbols"
            );
            ExitCode::from(2)
        }
    }
}
