//! `prxctl`: see the library documentation (`prxctl::`) for the commands and
//! the rule file format.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use common::net::control::{CONTROL_NAME, IP_CONTROL_NAME};
use common::net::policy::Proxies;
use common::net::rules::{MAX_NAME, ProcName};
use prxctl::transport::Transport;

#[derive(Parser)]
#[command(
    name = "prxctl",
    about = "Control PrxSocketFilter.kext and PrxIPFilter.kext: rules, proxies, status, lookups"
)]
struct Cli {
    /// Which kext to talk to: the socket filter (connection redirection) or
    /// the IP filter (NAT). Both speak the same protocol; each has its own
    /// rules, proxies and statistics.
    #[arg(long, global = true, value_enum, default_value_t = Kext::Socket)]
    kext: Kext,
    /// Talk to the KPI emulator's kern_control bridge at this Unix socket
    /// instead of the kernel (default on non-macOS systems: required).
    #[arg(long, global = true)]
    emu: Option<PathBuf>,
    /// Emulator only: the uid to present to the emulated kernel (default: the
    /// effective uid). The control is privileged: only uid 0 may connect.
    #[arg(long, global = true)]
    as_uid: Option<u32>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kext {
    /// PrxSocketFilter.kext (net.prx.kext.SocketFilter.control).
    Socket,
    /// PrxIPFilter.kext (net.prx.kext.IPFilter.control).
    Ip,
}

impl Kext {
    fn control(self) -> &'static str {
        match self {
            Kext::Socket => CONTROL_NAME,
            Kext::Ip => IP_CONTROL_NAME,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Rule sets.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Show whether filtering is enabled, the rules, the proxies and the statistics.
    Status,
    /// Show the original destination of a redirected client address.
    Lookup { client: SocketAddr },
    /// Enable filtering.
    Enable,
    /// Disable filtering (every connection passes unchanged).
    Disable,
    /// The IP filter's NAT timeouts, in seconds (with --kext ip; each from its
    /// RFC minimum to 604800). Omitted ones keep their current value; with none
    /// given, shows them. They apply to live flows too.
    Timeouts {
        /// Established TCP flows without packets expire after this long (≥ 7440).
        #[arg(long, value_name = "SECS")]
        tcp_idle: Option<u32>,
        /// TCP flows in SYN-sent or closing state (after a FIN or RST) without
        /// packets expire after this long (≥ 240).
        #[arg(long, value_name = "SECS")]
        tcp_closed: Option<u32>,
        /// UDP flows without packets expire after this long (≥ 120).
        #[arg(long, value_name = "SECS")]
        udp_idle: Option<u32>,
    },
    /// Proxies.
    Proxy {
        #[command(subcommand)]
        cmd: ProxyCmd,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Validate FILE and replace the kext's rule set with it, atomically.
    Load { file: PathBuf },
    /// Validate FILE only.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum ProxyCmd {
    /// Set the proxy address(es) (one IPv4 and/or one IPv6) and the proxy's own process.
    Set {
        #[arg(required = true, num_args = 1..=2)]
        addrs: Vec<SocketAddr>,
        /// The proxy's pid (its connections are never redirected; socket filter
        /// only: the IP filter sees packets, not processes, and ignores it).
        #[arg(long)]
        pid: Option<u32>,
        /// The proxy's process name (as --pid: socket filter only).
        #[arg(long)]
        name: Option<String>,
    },
}

fn open(cli: &Cli) -> Result<Box<dyn Transport>> {
    let name = cli.kext.control();
    if let Some(path) = &cli.emu {
        // SAFETY: geteuid cannot fail and has no preconditions.
        let uid = cli.as_uid.unwrap_or_else(|| unsafe { libc::geteuid() });
        let b = prxctl::transport::EmuBridge::connect(path, name, uid).with_context(|| {
            format!(
                "connecting to {name} through the emulator bridge {}",
                path.display()
            )
        })?;
        return Ok(Box::new(b));
    }
    #[cfg(target_os = "macos")]
    {
        let k = prxctl::transport::KernCtl::connect(name).with_context(|| {
            format!("connecting to kern_control {name} (is the kext loaded? are you root?)")
        })?;
        Ok(Box::new(k))
    }
    #[cfg(not(target_os = "macos"))]
    bail!("no kern_control on this system: pass --emu SOCKET (the KPI emulator's bridge)")
}

fn read_rules(file: &PathBuf) -> Result<prxctl::rules_file::RuleFile> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    prxctl::rules_file::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message))
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Rules {
            cmd: RulesCmd::Check { file },
        } => {
            let f = read_rules(file)?;
            println!("{}: ok, {}", file.display(), prxctl::render_rules(&f));
        }
        Cmd::Rules {
            cmd: RulesCmd::Load { file },
        } => {
            // Validated in full before anything is sent: a bad file changes nothing.
            let f = read_rules(file)?;
            let mut t = open(&cli)?;
            prxctl::load_rules(t.as_mut(), &f).context("setting the rules")?;
            println!("loaded {}", prxctl::render_rules(&f));
        }
        Cmd::Status => {
            let mut t = open(&cli)?;
            let s = prxctl::status(t.as_mut()).context("reading the status")?;
            let c = prxctl::stats(t.as_mut()).context("reading the statistics")?;
            let kind = match cli.kext {
                Kext::Socket => prxctl::KextKind::SocketFilter,
                Kext::Ip => prxctl::KextKind::IpFilter,
            };
            print!("{}", prxctl::render_status(kind, &s, &c));
        }
        Cmd::Lookup { client } => {
            let mut t = open(&cli)?;
            let o = prxctl::lookup(t.as_mut(), *client).context("looking up")?;
            print!("{}", prxctl::render_lookup(*client, o.as_ref()));
            if o.is_none() {
                std::process::exit(1);
            }
        }
        Cmd::Enable | Cmd::Disable => {
            let on = matches!(cli.cmd, Cmd::Enable);
            let mut t = open(&cli)?;
            prxctl::set_enabled(t.as_mut(), on).context("setting the enabled flag")?;
            println!("filtering {}", if on { "enabled" } else { "disabled" });
        }
        Cmd::Timeouts {
            tcp_idle,
            tcp_closed,
            udp_idle,
        } => {
            if cli.kext != Kext::Ip {
                bail!("NAT timeouts belong to the IP filter: use --kext ip");
            }
            let mut t = open(&cli)?;
            let current = prxctl::timeouts(t.as_mut()).context("reading the timeouts")?;
            let want = common::net::control::Timeouts {
                tcp_idle_s: tcp_idle.unwrap_or(current.tcp_idle_s),
                tcp_closed_s: tcp_closed.unwrap_or(current.tcp_closed_s),
                udp_idle_s: udp_idle.unwrap_or(current.udp_idle_s),
            };
            if want != current {
                prxctl::set_timeouts(t.as_mut(), &want).context("setting the timeouts")?;
            }
            print!("{}", prxctl::render_timeouts(&want));
        }
        Cmd::Proxy {
            cmd: ProxyCmd::Set { addrs, pid, name },
        } => {
            let mut p = Proxies {
                pid: *pid,
                ..Proxies::default()
            };
            for a in addrs {
                let slot = if a.is_ipv4() { &mut p.v4 } else { &mut p.v6 };
                if slot.is_some() {
                    bail!(
                        "two {} proxies given",
                        if a.is_ipv4() { "IPv4" } else { "IPv6" }
                    );
                }
                *slot = Some(prxctl::endpoint(*a));
            }
            if let Some(n) = name {
                if n.is_empty() || n.len() > MAX_NAME || n.contains('\0') {
                    bail!("--name: a process name is 1 to {MAX_NAME} bytes");
                }
                p.name = Some(ProcName::new(n.as_bytes()));
            }
            let mut t = open(&cli)?;
            prxctl::set_proxies(t.as_mut(), &p).context("setting the proxies")?;
            println!("proxies set");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prxctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
