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

/// The help heading of the flags that only matter with the KPI emulator.
const EMU_HEADING: &str = "Emulator only (trying prxctl on Linux)";

/// `ADDR:PORT` for clap, with an error that shows the expected form.
fn socket_addr_arg(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        let hint = if s.parse::<std::net::IpAddr>().is_ok() {
            " (the port is missing)"
        } else {
            ""
        };
        format!("expected ADDR:PORT{hint}, e.g. 127.0.0.1:3128 or [::1]:3128 (IPv6 in brackets)")
    })
}

#[derive(Parser)]
#[command(
    name = "prxctl",
    version,
    about = "Control PrxSocketFilter.kext and PrxIPFilter.kext: rules, proxies, status, lookups"
)]
struct Cli {
    /// Which kext to talk to: the socket filter (connection redirection) or
    /// the IP filter (NAT). Both speak the same protocol; each has its own
    /// rules, proxies and statistics.
    #[arg(long, global = true, value_enum, default_value_t = Kext::Socket)]
    kext: Kext,
    /// Talk to the KPI emulator's kern_control bridge at this Unix socket
    /// instead of the kernel (required on non-macOS systems; start one with
    /// `cargo xtask emu-bridge`).
    #[arg(long, global = true, value_name = "SOCKET", help_heading = EMU_HEADING)]
    emu: Option<PathBuf>,
    /// The uid to present to the emulated kernel (default: the effective
    /// uid). The control is privileged: only uid 0 may connect.
    #[arg(long, global = true, value_name = "UID", help_heading = EMU_HEADING)]
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
    Lookup {
        /// The client's address, as the proxy sees it.
        #[arg(value_name = "ADDR:PORT", value_parser = socket_addr_arg)]
        client: SocketAddr,
    },
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
    /// Bring both kexts to the configuration FILE (default: /Library/Application
    /// Support/prx/prx.toml): the whole file is checked first, then only what
    /// differs is changed, and printed.
    Apply {
        /// The configuration (TOML; see prx.toml.example).
        file: Option<PathBuf>,
        /// Only check the file; change nothing.
        #[arg(long)]
        check: bool,
        /// Load the kexts first when they are not loaded (kmutil or kextload).
        #[arg(long, conflicts_with = "check")]
        load: bool,
        /// Where apply remembers the rule sets it installed.
        #[arg(long, hide = true, value_name = "DIR", default_value = prxctl::apply::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// What the kext logs: off (start and stop only), decisions (also rule
    /// changes, redirects, blocks, failures: the default) or debug (also what
    /// passes). Rate-limited; with no level given, shows it.
    LogLevel {
        #[arg(value_enum)]
        level: Option<LevelArg>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LevelArg {
    /// Start and stop only.
    Off,
    /// Rule changes, redirects, blocks and failures.
    Decisions,
    /// Also every connection or flow that passes unchanged.
    Debug,
}

impl From<LevelArg> for common::net::control::LogLevel {
    fn from(l: LevelArg) -> Self {
        match l {
            LevelArg::Off => Self::Off,
            LevelArg::Decisions => Self::Decisions,
            LevelArg::Debug => Self::Debug,
        }
    }
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Validate FILE and replace the kext's rule set with it, atomically.
    Load { file: PathBuf },
    /// Validate FILE only (and warn about rules the chosen kext never applies).
    Check { file: PathBuf },
    /// Print the installed rules as a rules file (`rules load` takes it back).
    Show,
}

#[derive(Subcommand)]
enum ProxyCmd {
    /// Set the proxy address(es) (one IPv4 and/or one IPv6) and the proxy's own process.
    Set {
        #[arg(required = true, num_args = 1..=2, value_name = "ADDR:PORT", value_parser = socket_addr_arg)]
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
    open_control(cli, cli.kext.control())
}

fn open_control(cli: &Cli, name: &str) -> Result<Box<dyn Transport>> {
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
    bail!(
        "no kern_control on this system: pass --emu SOCKET, the KPI emulator's bridge (start one with `cargo xtask emu-bridge`)"
    )
}

fn read_rules(file: &PathBuf) -> Result<prxctl::rules_file::RuleFile> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    prxctl::rules_file::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message))
}

impl Kext {
    fn kind(self) -> prxctl::KextKind {
        match self {
            Kext::Socket => prxctl::KextKind::SocketFilter,
            Kext::Ip => prxctl::KextKind::IpFilter,
        }
    }
}

/// Prints a warning per rule the chosen kext can never apply.
fn warn_inapplicable(cli: &Cli, file: &std::path::Path, f: &prxctl::rules_file::RuleFile) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    for w in prxctl::applicability::warnings(cli.kext.kind(), f, &text) {
        eprintln!("prxctl: warning: {}:{w}", file.display());
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Apply {
            file,
            check,
            load,
            state_dir,
        } => apply(&cli, file.as_deref(), *check, *load, state_dir)?,
        Cmd::Rules {
            cmd: RulesCmd::Check { file },
        } => {
            let f = read_rules(file)?;
            warn_inapplicable(&cli, file, &f);
            println!("{}: ok, {}", file.display(), prxctl::render_rules(&f));
        }
        Cmd::Rules {
            cmd: RulesCmd::Show,
        } => {
            let mut t = open(&cli)?;
            let f = prxctl::show::read_rules(t.as_mut()).context("reading the rules")?;
            let s = prxctl::status(t.as_mut()).context("reading the status")?;
            print!(
                "{}",
                prxctl::show::render_rule_file(
                    &f,
                    &format!(
                        "The rules installed in {} (rule set {}); `prxctl{} rules load FILE` takes this back.",
                        cli.kext.control(),
                        s.generation,
                        if cli.kext == Kext::Ip {
                            " --kext ip"
                        } else {
                            ""
                        }
                    )
                )
            );
        }
        Cmd::Rules {
            cmd: RulesCmd::Load { file },
        } => {
            // Validated in full before anything is sent: a bad file changes nothing.
            let f = read_rules(file)?;
            warn_inapplicable(&cli, file, &f);
            let mut t = open(&cli)?;
            prxctl::load_rules(t.as_mut(), &f).context("setting the rules")?;
            println!("loaded {}", prxctl::render_rules(&f));
        }
        Cmd::Status => {
            let mut t = open(&cli)?;
            let s = prxctl::status(t.as_mut()).context("reading the status")?;
            let c = prxctl::stats(t.as_mut()).context("reading the statistics")?;
            print!("{}", prxctl::render_status(cli.kext.kind(), &s, &c));
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
        Cmd::LogLevel { level } => {
            let mut t = open(&cli)?;
            if let Some(l) = level {
                prxctl::set_log_level(t.as_mut(), (*l).into()).context("setting the log level")?;
            }
            let (l, dropped) = prxctl::log_level(t.as_mut()).context("reading the log level")?;
            println!(
                "log level {} ({dropped} line(s) dropped by the rate limit so far)",
                l.name()
            );
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

/// `prxctl apply` (see `prxctl::apply`).
fn apply(
    cli: &Cli,
    file: Option<&std::path::Path>,
    check: bool,
    load: bool,
    state_dir: &std::path::Path,
) -> Result<()> {
    use prxctl::apply::{KEXTS, part};
    let path = file.unwrap_or(std::path::Path::new(prxctl::config::DEFAULT_PATH));
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = prxctl::config::parse(&text).map_err(|e| {
        anyhow::anyhow!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message)
    })?;
    if check {
        println!(
            "{}: ok; {}",
            path.display(),
            prxctl::apply::summary(&config)
        );
        return Ok(());
    }
    if load && cli.emu.is_some() {
        bail!("--load loads kexts into macOS; the emulator behind --emu loads its own");
    }
    // Every configured kext is reached (and answers) before anything changes;
    // then each is configured over a connection of its own (the emulator's
    // bridge serves one connection at a time).
    let mut targets = Vec::new();
    for k in &KEXTS {
        let Some(want) = part(&config, k) else {
            println!("{}: not in {}; left as it is", k.table, path.display());
            continue;
        };
        let t = match open_control(cli, k.control) {
            Ok(t) => t,
            Err(e) if load => {
                let major = prxctl::apply::macos_major().context("reading the macOS version")?;
                let (prog, args) = prxctl::apply::load_command(major, k);
                println!("{}: not loaded; running {prog} {}", k.table, args.join(" "));
                let status = std::process::Command::new(&prog)
                    .args(&args)
                    .status()
                    .with_context(|| format!("running {prog}"))?;
                if !status.success() {
                    bail!(
                        "{prog} {} failed ({status}): approve the kext in System Settings > Privacy & Security and restart (first error: {e:#})",
                        args.join(" ")
                    );
                }
                let mut last = e;
                let mut opened = None;
                for _ in 0..20 {
                    match open_control(cli, k.control) {
                        Ok(t) => {
                            opened = Some(t);
                            break;
                        }
                        Err(e) => last = e,
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                opened.with_context(|| format!("{} loaded, but: {last:#}", k.bundle))?
            }
            Err(e) => return Err(e.context(format!("{}: nothing was changed", k.table))),
        };
        let mut t = t;
        prxctl::status(t.as_mut())
            .with_context(|| format!("{}: reading the status; nothing was changed", k.table))?;
        drop(t);
        targets.push((k, want));
    }
    for (k, want) in targets {
        let mut t = open_control(cli, k.control)?;
        let changed = prxctl::apply::apply_kext(t.as_mut(), k, want, state_dir)
            .with_context(|| format!("applying [{}]", k.table))?;
        if changed.is_empty() {
            println!("{}: unchanged", k.table);
        }
        for c in changed {
            println!("{}: {c}", k.table);
        }
    }
    Ok(())
}

/// The fix for a refused privileged control, when `e` is one.
fn privilege_hint(e: &anyhow::Error, emu: bool) -> Option<&'static str> {
    let refused = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::PermissionDenied || io.raw_os_error() == Some(1)
        })
    });
    match (refused, emu) {
        (false, _) => None,
        (true, false) => Some("the kext's control is for root only: run prxctl with sudo"),
        (true, true) => Some(
            "the kext's control is for root only: run prxctl with sudo (with --emu: add --as-uid 0)",
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let emu = cli.emu.is_some();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prxctl: {e:#}");
            if let Some(hint) = privilege_hint(&e, emu) {
                eprintln!("prxctl: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
