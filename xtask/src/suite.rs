//! `cargo xtask test`: make sure this machine has what the test suite uses, install
//! what is missing (saying what and why), then run the suite (`cargo test`).
//!
//! The suite cross-checks prx's output with independent tools and real
//! third-party programs; every one of them is listed in [`NEEDS`], with the
//! Debian package that provides it. A test never skips because a tool is
//! missing: it fails and names the tool. This command is what makes a fresh
//! machine with nothing but rustup able to run the suite; `.ci/run` calls it.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use xshell::{Cmd, Shell, cmd};

use crate::toolchain;

/// How to tell whether a need is met.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// A program on PATH.
    Program(&'static str),
    /// A file at a fixed path (libraries, daemons outside PATH).
    File(&'static str),
    /// A command that succeeds when the need is met (e.g. a Python module).
    Runs(&'static [&'static str]),
}

/// One thing the suite uses from outside the Rust toolchain.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub probe: Probe,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// What the tests use it for.
    pub why: &'static str,
}

const fn program(name: &'static str, package: &'static str, why: &'static str) -> Need {
    Need {
        probe: Probe::Program(name),
        package,
        why,
    }
}

const fn file(path: &'static str, package: &'static str, why: &'static str) -> Need {
    Need {
        probe: Probe::File(path),
        package,
        why,
    }
}

/// What the emulator's arm64e runs need (`vm-test --arch arm64e`, the vm
/// crate's arm64e tests): the aarch64 cross linker and C library, and QEMU's
/// user-mode emulator, which implements pointer authentication (`-cpu max`).
pub const ARM64E_NEEDS: &[Need] = &[
    program(
        "qemu-aarch64",
        "qemu-user",
        "running the emulator as an aarch64 program with pointer authentication (arm64e slices)",
    ),
    program(
        "aarch64-linux-gnu-gcc",
        "gcc-aarch64-linux-gnu",
        "linking the aarch64 build of the emulator (prx-emu) and compiling its C shims",
    ),
    file(
        "/usr/aarch64-linux-gnu/lib/crt1.o",
        "libc6-dev-arm64-cross",
        "the aarch64 C library the emulator links against and qemu-aarch64 loads (-L /usr/aarch64-linux-gnu)",
    ),
];

/// Everything outside the Rust toolchain that the suite runs.
pub const NEEDS: &[Need] = &[
    ARM64E_NEEDS[0],
    ARM64E_NEEDS[1],
    ARM64E_NEEDS[2],
    program(
        "llvm-otool-19",
        "llvm-19",
        "reading the kexts' load commands",
    ),
    program(
        "llvm-objdump-19",
        "llvm-19",
        "disassembling and decoding fixups",
    ),
    program("llvm-nm-19", "llvm-19", "listing symbols"),
    program("llvm-lipo-19", "llvm-19", "splitting universal binaries"),
    program("llvm-readobj-19", "llvm-19", "reading Mach-O structures"),
    program("clang-19", "clang-19", "C test kexts and layout probes"),
    program(
        "ld64.lld-19",
        "lld-19",
        "linking arm64 fixtures for the fixup decoder",
    ),
    file(
        "/usr/lib/llvm-19/lib/libclang.so",
        "libclang-19-dev",
        "checking the committed KPI bindings with bindgen",
    ),
    program(
        "bsdtar",
        "libarchive-tools",
        "reading the .pkg and its payload",
    ),
    program("cpio", "cpio", "reading the .pkg payload"),
    program("7zz", "7zip", "reading the .pkg and the .zip"),
    file(
        "/usr/sbin/sshd",
        "openssh-server",
        "the ssh backend's loopback tests",
    ),
    program("ssh", "openssh-client", "the ssh backend's loopback tests"),
    file(
        "/usr/sbin/haproxy",
        "haproxy",
        "prxd's tests: a PROXY v2 sender that is not ours",
    ),
    program(
        "microsocks",
        "microsocks",
        "prxd's tests: a SOCKS5 upstream with username/password",
    ),
    program(
        "tinyproxy",
        "tinyproxy",
        "prxd's tests: an HTTP CONNECT upstream with Basic auth",
    ),
    file(
        "/usr/sbin/danted",
        "dante-server",
        "prxd's tests: a SOCKS5 upstream with UDP ASSOCIATE (RFC 1928 §7; microsocks has none)",
    ),
    program(
        "ssh-keygen",
        "openssh-client",
        "host and user keys for the loopback sshd",
    ),
    program(
        "shellcheck",
        "shellcheck",
        "checking the installer's scripts",
    ),
    program(
        "openssl",
        "openssl",
        "making the .p12 files (OpenSSL 3 default and -legacy) the signing tests read",
    ),
    Need {
        probe: Probe::Runs(&["python3", "-m", "pip", "--version"]),
        package: "python3-pip",
        why: "fetching the libSystem link stub (ziglang from PyPI) for the macOS tools",
    },
];

/// Rustup components of the pinned toolchain that the suite uses.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("rust-src", "-Zbuild-std for the kernel targets"),
    ("clippy", "the tidy test's kernel-target clippy run"),
    ("rustfmt", "the tidy test's formatting check"),
];

/// Rustup targets of the pinned toolchain that the suite uses.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "x86_64-apple-darwin",
        "the macOS tools' x86_64 slice and their macOS-only code",
    ),
    ("aarch64-apple-darwin", "the macOS tools' arm64 slice"),
    (
        "aarch64-unknown-linux-gnu",
        "the aarch64 build of the emulator that runs the arm64e slices under qemu-aarch64",
    ),
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
        })
    })
}

impl Need {
    pub fn met(&self) -> bool {
        match self.probe {
            Probe::Program(p) => on_path(p),
            Probe::File(f) => Path::new(f).exists(),
            Probe::Runs(argv) => argv.split_first().is_some_and(|(p, rest)| {
                Shell::new().is_ok_and(|sh| {
                    cmd!(sh, "{p} {rest...}")
                        .quiet()
                        .ignore_stdout()
                        .ignore_stderr()
                        .run()
                        .is_ok()
                })
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self.probe {
            Probe::Program(p) | Probe::File(p) => p,
            Probe::Runs(argv) => argv.get(2).copied().unwrap_or("a command"),
        }
    }
}

/// The Debian packages to install for the needs that are not met, each once,
/// in the order of [`NEEDS`].
pub fn missing_packages(needs: &[Need]) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for n in needs.iter().filter(|n| !n.met()) {
        if !pkgs.contains(&n.package) {
            pkgs.push(n.package);
        }
    }
    pkgs
}

/// Runs a command with root's rights: directly as root, else through `sudo`.
fn as_root(args: &[&str]) -> Result<()> {
    let sh = Shell::new().context("starting a shell for external commands")?;
    let is_root = cmd!(sh, "id -u")
        .quiet()
        .read()
        .is_ok_and(|u| u.trim() == "0");
    let Some((program, rest)) = args.split_first() else {
        bail!("as_root: no command");
    };
    let cmd = if is_root {
        cmd!(sh, "{program} {rest...}")
    } else {
        if !on_path("sudo") {
            bail!(
                "installing needs root and sudo is not installed: run `{}` as root, then `cargo xtask test` again",
                args.join(" ")
            );
        }
        cmd!(sh, "sudo {args...}")
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .quiet()
        .run()
        .with_context(|| format!("`{}` failed", args.join(" ")))
}

/// Installs the Debian packages the suite needs and lacks, saying which and why.
pub fn ensure_debian_packages() -> Result<()> {
    ensure_debian_packages_for(NEEDS, "xtask test")
}

/// Installs the Debian packages of `needs` that are missing, saying which and
/// why (`who` starts each message, e.g. `xtask vm-test`).
pub fn ensure_debian_packages_for(needs: &[Need], who: &str) -> Result<()> {
    let pkgs = missing_packages(needs);
    if pkgs.is_empty() {
        return Ok(());
    }
    for n in needs.iter().filter(|n| !n.met()) {
        eprintln!(
            "{who}: {} is missing (Debian package {}; the tests use it for {})",
            n.name(),
            n.package,
            n.why
        );
    }
    if !on_path("apt-get") {
        bail!(
            "this machine has no apt-get: install the packages providing the tools above ({}) by hand, then run `cargo xtask test` again",
            pkgs.join(" ")
        );
    }
    eprintln!(
        "{who}: installing Debian packages: {} (apt-get)",
        pkgs.join(" ")
    );
    as_root(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&pkgs);
    as_root(&install)?;
    let still: Vec<&str> = needs
        .iter()
        .filter(|n| !n.met())
        .map(|n| n.name())
        .collect();
    if !still.is_empty() {
        bail!(
            "after installing {}, still missing: {} (is this Debian 12 or newer with its llvm-19 packages?)",
            pkgs.join(" "),
            still.join(", ")
        );
    }
    Ok(())
}

fn rustup_list(root: &Path, what: &str, channel: &str) -> Result<Vec<String>> {
    let sh = toolchain::shell(root)?;
    let out = cmd!(sh, "rustup {what} list --installed --toolchain {channel}")
        .quiet()
        .read()
        .with_context(|| {
            format!(
                "listing the installed {what}s of toolchain {channel} (rustup: https://rustup.rs)"
            )
        })?;
    Ok(out.lines().map(|l| l.trim().to_owned()).collect())
}

/// Adds the rustup components and targets the suite uses to the pinned toolchain.
pub fn ensure_rustup_parts(root: &Path) -> Result<()> {
    let channel = toolchain::pinned_channel(root)?;
    let installed = rustup_list(root, "component", &channel)?;
    for (component, why) in COMPONENTS {
        // `rustup component list --installed` names components with their host
        // triple (`clippy-x86_64-unknown-linux-gnu`), rust-src without one.
        let have = installed
            .iter()
            .any(|c| c == component || c.starts_with(&format!("{component}-")));
        if !have {
            eprintln!(
                "xtask test: adding rustup component {component} to toolchain {channel} (for {why})"
            );
            rustup(
                root,
                &["component", "add", component, "--toolchain", &channel],
            )?;
        }
    }
    let installed = rustup_list(root, "target", &channel)?;
    for (target, why) in TARGETS {
        if !installed.iter().any(|t| t == target) {
            eprintln!(
                "xtask test: adding rustup target {target} to toolchain {channel} (for {why})"
            );
            rustup(root, &["target", "add", target, "--toolchain", &channel])?;
        }
    }
    Ok(())
}

fn rustup(root: &Path, args: &[&str]) -> Result<()> {
    let sh = toolchain::shell(root)?;
    cmd!(sh, "rustup {args...}")
        .quiet()
        .run()
        .with_context(|| format!("`rustup {}` failed", args.join(" ")))
}

/// A `cargo` command for the workspace without the variables `cargo run` set
/// for xtask itself ([`toolchain::set_by_cargo_run`]): build scripts that
/// watch them would otherwise see a different environment than a plain
/// `cargo test` and rebuild. It runs in `sh`'s directory; the `std::process`
/// form is [`toolchain::clean_cargo`].
pub fn clean_cargo(sh: &Shell) -> Cmd<'_> {
    let cargo = toolchain::cargo();
    let mut cmd = cmd!(sh, "{cargo}");
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && toolchain::set_by_cargo_run(key)
        {
            cmd = cmd.env_remove(key);
        }
    }
    cmd
}

/// `cargo xtask test [--no-install] [-- ARGS]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Do not install anything: fail, naming what is missing and how to install it.
    #[arg(long)]
    pub no_install: bool,
    /// Passed on to `cargo test` (e.g. `-p common`, or `-- --test-threads 1`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CARGO_TEST_ARGS"
    )]
    pub cargo_test_args: Vec<String>,
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    if args.no_install {
        let missing: Vec<String> = NEEDS
            .iter()
            .filter(|n| !n.met())
            .map(|n| format!("{} (Debian package {})", n.name(), n.package))
            .collect();
        if !missing.is_empty() {
            bail!(
                "--no-install: missing {}; run `cargo xtask test` without --no-install to install them",
                missing.join(", ")
            );
        }
    } else {
        ensure_debian_packages()?;
        ensure_rustup_parts(root)?;
    }
    eprintln!(
        "xtask test: running `cargo test --no-fail-fast{}{}`",
        if args.cargo_test_args.is_empty() {
            ""
        } else {
            " "
        },
        args.cargo_test_args.join(" ")
    );
    // --no-fail-fast: every test binary runs, so one run lists every failure.
    let sh = toolchain::shell(root)?;
    clean_cargo(&sh)
        .args(["test", "--no-fail-fast"])
        .args(&args.cargo_test_args)
        .quiet()
        .run()
        .map_err(|e| anyhow!("the test suite failed ({e}); the failing tests are listed above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_named_once_in_order() {
        let needs = [
            file("/nonexistent/a", "pkg-a", "x"),
            file("/nonexistent/b", "pkg-b", "x"),
            file("/nonexistent/c", "pkg-a", "x"),
            file("/", "pkg-present", "x"),
        ];
        assert_eq!(missing_packages(&needs), ["pkg-a", "pkg-b"]);
    }

    /// `cargo test` sets `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME` for this test
    /// as `cargo run` does for xtask: the nested cargo must not see them.
    #[test]
    fn the_nested_cargo_runs_without_cargo_runs_variables() {
        let sh = Shell::new().unwrap();
        let cmd = std::process::Command::from(clean_cargo(&sh));
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for key in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION"] {
            assert!(
                std::env::var_os(key).is_some(),
                "{key} is set under cargo test"
            );
            assert!(
                removed.iter().any(|k| k == key),
                "{key} not removed: {removed:?}"
            );
        }
        assert!(!removed.iter().any(|k| k == "PATH" || k == "CARGO_HOME"));
        assert_eq!(cmd.get_program(), toolchain::cargo().as_os_str());
    }

    #[test]
    fn a_program_on_path_is_found_and_a_made_up_one_is_not() {
        assert!(on_path("sh"));
        assert!(!on_path("prx-no-such-program-xyz"));
    }
}
