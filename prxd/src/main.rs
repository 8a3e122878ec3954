//! prxd: the transparent proxy daemon of prx.
//!
//! ```text
//! prxd --config FILE [--emu SOCKET]       run with the [prxd] table of FILE (prx.toml)
//! prxd check --config FILE                validate FILE, change nothing
//! prxd run --listen ADDR:PORT [--listen …] [--upstream URL|direct] [--trust-header]
//!          [--password-file FILE] [--status-socket PATH] [--max-connections N] [--emu SOCKET]
//!                                         a quick foreground run without a file
//! prxd status --socket PATH               the counters of a running prxd
//! ```
//!
//! An upstream's password never goes on the command line: `--password-file
//! FILE`, or the environment variable `PRXD_UPSTREAM_PASSWORD`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prxd::config::{self, Config, Kext, Via};
use prxd::upstream::Upstream;

#[derive(Parser)]
#[command(
    name = "prxd",
    version,
    about = "The proxy end of prx's redirect: recovers each redirected connection's original destination and forwards it directly or through a SOCKS5/HTTP upstream"
)]
struct Cli {
    /// The configuration file (its [prxd] table; the system-wide prx.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Talk to the KPI emulator's control bridge at SOCKET instead of the kexts (tests).
    #[arg(long, value_name = "SOCKET", global = true)]
    emu: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run in the foreground without a configuration file.
    Run {
        /// Listen address (repeatable).
        #[arg(long, value_name = "ADDR:PORT", required = true)]
        listen: Vec<SocketAddr>,
        /// Where connections go: `direct` (default), socks5://[USER@]HOST:PORT or http://[USER@]HOST:PORT.
        #[arg(long, value_name = "URL|direct", default_value = "direct")]
        upstream: String,
        /// The upstream's password, from the first line of FILE (else $PRXD_UPSTREAM_PASSWORD).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Accept PROXY v2 headers without the kext's word (no kext, or behind haproxy).
        #[arg(long)]
        trust_header: bool,
        /// Serve the counters on this Unix socket (`prxd status`).
        #[arg(long, value_name = "PATH")]
        status_socket: Option<PathBuf>,
        /// Connection limit.
        #[arg(long, value_name = "N")]
        max_connections: Option<usize>,
        /// Idle timeout in seconds.
        #[arg(long, value_name = "S")]
        idle_timeout: Option<u64>,
        /// Connect timeout in seconds.
        #[arg(long, value_name = "S")]
        connect_timeout: Option<u64>,
        /// UDP flow idle timeout in seconds.
        #[arg(long, value_name = "S")]
        udp_idle_timeout: Option<u64>,
        /// PROXY v2 header timeout in seconds.
        #[arg(long, value_name = "S")]
        header_timeout: Option<u64>,
        /// Which kexts to ask (socket, ip; default both).
        #[arg(long, value_name = "KEXT", value_delimiter = ',')]
        controls: Option<Vec<String>>,
    },
    /// Validate a configuration file; change nothing.
    Check {
        /// The file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a running prxd's counters.
    Status {
        /// Its status socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("prxd: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_config(
    listen: Vec<SocketAddr>,
    upstream: &str,
    password_file: Option<PathBuf>,
    trust_header: bool,
) -> anyhow::Result<Config> {
    let mut c = Config {
        listen,
        trust_header,
        ..Config::default()
    };
    if upstream != "direct" {
        let pw = match password_file {
            Some(f) => Some(
                config::read_password_file(&f)
                    .map_err(|e| anyhow::anyhow!("--password-file: {e}"))?,
            ),
            None => std::env::var("PRXD_UPSTREAM_PASSWORD")
                .ok()
                .filter(|v| !v.is_empty())
                .map(prxd::upstream::Secret::new),
        };
        let up = Upstream::parse(upstream, pw).map_err(|e| anyhow::anyhow!("--upstream: {e}"))?;
        c.upstreams.insert("upstream".into(), up);
        c.default = Via::Upstream("upstream".into());
    }
    Ok(c)
}

fn real_main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Status { socket }) => {
            print!("{}", prxd::status::read(&socket)?);
            Ok(0)
        }
        Some(Cmd::Check { config }) => {
            let c = config::load(&config).map_err(anyhow::Error::msg)?;
            println!(
                "{}: valid ({} listen address(es), {} upstream(s), {} route(s))",
                config.display(),
                c.listen.len(),
                c.upstreams.len(),
                c.routes.len()
            );
            Ok(0)
        }
        Some(Cmd::Run {
            listen,
            upstream,
            password_file,
            trust_header,
            status_socket,
            max_connections,
            idle_timeout,
            connect_timeout,
            udp_idle_timeout,
            header_timeout,
            controls,
        }) => {
            if cli.config.is_some() {
                anyhow::bail!("give either --config FILE or `run …`, not both");
            }
            let mut c = run_config(listen, &upstream, password_file, trust_header)?;
            c.status_socket = status_socket;
            if let Some(n) = max_connections {
                c.max_connections = n.max(1);
            }
            let secs =
                |v: Option<u64>, d| v.map_or(d, |s: u64| std::time::Duration::from_secs(s.max(1)));
            c.idle_timeout = secs(idle_timeout, c.idle_timeout);
            c.connect_timeout = secs(connect_timeout, c.connect_timeout);
            c.udp_idle_timeout = secs(udp_idle_timeout, c.udp_idle_timeout);
            c.header_timeout = secs(header_timeout, c.header_timeout);
            if let Some(k) = controls {
                c.controls = k
                    .iter()
                    .filter(|s| !s.is_empty() && s.as_str() != "none")
                    .map(|s| match s.as_str() {
                        "socket" => Ok(Kext::Socket),
                        "ip" => Ok(Kext::Ip),
                        o => Err(anyhow::anyhow!(
                            "--controls: `{o}` is not socket, ip or none"
                        )),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            prxd::run(prxd::Start {
                config: c,
                config_path: None,
                emu: cli.emu,
            })
        }
        None => {
            let Some(path) = cli.config else {
                anyhow::bail!(
                    "give --config FILE (see `prxd --help`), or `prxd run --listen ADDR:PORT`"
                );
            };
            if config::has_prxd_table(&path) == Some(false) {
                // launchd (KeepAlive: SuccessfulExit false) leaves it stopped.
                eprintln!(
                    "prxd: {} has no [prxd] table: nothing to do, exiting. To run prxd, add one \
                     (see prx.toml.example) and run `sudo launchctl kickstart system/net.prx.prxd`",
                    path.display()
                );
                return Ok(0);
            }
            let c = config::load(&path).map_err(anyhow::Error::msg)?;
            prxd::run(prxd::Start {
                config: c,
                config_path: Some(path),
                emu: cli.emu,
            })
        }
    }
}
