//! The macOS executables (`[workspace.metadata.prx] tools`: `prxctl` and
//! `prxd`), built on Linux without an Apple SDK as part of
//! `cargo xtask build`.
//!
//! Per tool: one `cargo build` per slice — `x86_64-apple-darwin` for macOS 10.13
//! and `aarch64-apple-darwin` for macOS 11.0 (`MACOSX_DEPLOYMENT_TARGET`, which
//! rustc writes into `LC_BUILD_VERSION`) — linked by `ld64.lld-19` (Debian's
//! lld-19) against a text stub of libSystem (`libSystem.tbd` from the `ziglang`
//! package on PyPI, which is generated from Apple's SDKs), then joined by
//! [`kextld::fat::write_slices`] into `target/macos/universal-apple-darwin/<profile>/<tool>`.
//! Missing pieces are installed, saying so: the two rustup targets and the
//! stub (`pip install ziglang==ZIGLANG_VERSION` into a temporary directory, of
//! which only `libSystem.tbd` and zig's licence are kept). ARCHITECTURE.md says
//! why this linker setup rather than cargo-zigbuild.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::toolchain;

/// The `ziglang` release on PyPI whose `libSystem.tbd` is the link stub.
pub const ZIGLANG_VERSION: &str = "0.15.2";

/// The linker: lld's Mach-O port, from Debian's `lld-19`.
pub const LINKER: &str = "ld64.lld-19";

/// One architecture of the universal executables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSlice {
    /// Rust target triple.
    pub triple: &'static str,
    /// `llvm-lipo -info` / `-arch` name.
    pub arch: &'static str,
    /// Minimum macOS (`MACOSX_DEPLOYMENT_TARGET`).
    pub min_macos: &'static str,
    /// `fat_arch.cputype`.
    pub cputype: u32,
    /// `fat_arch.cpusubtype` (`CPU_SUBTYPE_*_ALL`).
    pub cpusubtype: u32,
    /// log2 of the slice alignment (the architecture's page size, as lipo uses).
    pub align_log2: u32,
}

/// The slices, in the order of the universal binary.
pub const SLICES: [ToolSlice; 2] = [
    ToolSlice {
        triple: "x86_64-apple-darwin",
        arch: "x86_64",
        min_macos: "10.13",
        cputype: 0x0100_0007,
        cpusubtype: 3,
        align_log2: 12,
    },
    ToolSlice {
        triple: "aarch64-apple-darwin",
        arch: "arm64",
        min_macos: "11.0",
        cputype: 0x0100_000C,
        cpusubtype: 0,
        align_log2: 14,
    },
];

/// One universal executable written (or found up to date).
#[derive(Debug, Clone)]
pub struct BuiltTool {
    /// Package (and executable) name, e.g. `prxctl`.
    pub name: String,
    /// `target/macos/universal-apple-darwin/<profile>/<name>`.
    pub path: PathBuf,
    /// Size of the universal file.
    pub size: u64,
    /// False when an identical file was already there.
    pub changed: bool,
}

/// The tools the workspace ships for macOS: `[workspace.metadata.prx] tools`.
/// Adding a tool (a workspace package with a binary of its name) to that list
/// is all it takes to build, sign and install it.
pub fn tool_crates(root: &Path) -> Result<Vec<String>> {
    let meta = crate::build::workspace_metadata(root)?;
    let names = meta["metadata"]["prx"]["tools"]
        .as_array()
        .context("Cargo.toml: [workspace.metadata.prx] tools = [...] is missing")?;
    let mut tools = Vec::new();
    for name in names {
        let name = name
            .as_str()
            .context("[workspace.metadata.prx] tools: not a string")?;
        let known = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == name);
        if !known {
            bail!("[workspace.metadata.prx] tools: no workspace package {name:?}");
        }
        tools.push(name.to_string());
    }
    Ok(tools)
}

/// The stub SDK directory (`SDKROOT`): `usr/lib/libSystem.tbd` and the names
/// rustc links besides `-lSystem` (`libc`, `libm`, `libiconv`, `libpthread`)
/// as links to it, as in Apple's SDKs. A symbol libSystem does not export
/// stays undefined and fails the link; nothing can bind to another library.
pub fn stub_sdk_dir(target: &Path) -> PathBuf {
    target
        .join("macos-sdk")
        .join(format!("ziglang-{ZIGLANG_VERSION}"))
}

/// The libSystem stub inside [`stub_sdk_dir`].
pub fn libsystem_stub(target: &Path) -> PathBuf {
    stub_sdk_dir(target).join("usr/lib/libSystem.tbd")
}

/// Makes sure the libSystem stub is there, installing it (and saying so)
/// with `python3 -m pip install ziglang==ZIGLANG_VERSION` into a temporary
/// directory when it is missing.
pub fn ensure_stub(target: &Path) -> Result<PathBuf> {
    let sdk = stub_sdk_dir(target);
    let tbd = libsystem_stub(target);
    if tbd.is_file() {
        return Ok(sdk);
    }
    let parent = target.join("macos-sdk");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    eprintln!(
        "xtask: the libSystem link stub for macOS executables is missing; running \
         `python3 -m pip install ziglang=={ZIGLANG_VERSION}` into a temporary directory \
         (about 60 MB from PyPI) and keeping its lib/libc/darwin/libSystem.tbd in {}",
        sdk.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix(".ziglang-")
        .tempdir_in(&parent)
        .with_context(|| format!("{}: not writable", parent.display()))?;
    let sh = toolchain::shell(&parent)?;
    let dir = tmp.path();
    cmd!(
        sh,
        "python3 -m pip install --quiet --disable-pip-version-check --no-deps --target {dir} ziglang=={ZIGLANG_VERSION}"
    )
    .quiet()
    .run()
    .with_context(|| {
        format!(
            "`python3 -m pip install ziglang=={ZIGLANG_VERSION}` failed (python3 and pip: \
             apt-get install python3-pip); install it by hand and rerun"
        )
    })?;
    let zig = tmp.path().join("ziglang");
    let src = zig.join("lib/libc/darwin/libSystem.tbd");
    if !src.is_file() {
        bail!(
            "ziglang {ZIGLANG_VERSION} has no lib/libc/darwin/libSystem.tbd; \
             xtask/src/tools.rs pins a version that has one"
        );
    }
    // Fill a staging directory, then rename it into place: no half-made stub.
    let stage = tempfile::Builder::new()
        .prefix(".sdk-")
        .tempdir_in(&parent)
        .with_context(|| format!("{}: not writable", parent.display()))?;
    let lib = stage.path().join("usr/lib");
    std::fs::create_dir_all(&lib)?;
    std::fs::copy(&src, lib.join("libSystem.tbd")).context("copying libSystem.tbd")?;
    for name in [
        "libc",
        "libm",
        "libiconv",
        "libpthread",
        "libdl",
        "libresolv",
    ] {
        std::os::unix::fs::symlink("libSystem.tbd", lib.join(format!("{name}.tbd")))?;
    }
    if zig.join("LICENSE").is_file() {
        std::fs::copy(zig.join("LICENSE"), stage.path().join("ZIG-LICENSE"))?;
    }
    let stage = stage.keep();
    std::fs::rename(&stage, &sdk)
        .with_context(|| format!("moving the stub to {}", sdk.display()))?;
    Ok(sdk)
}

/// Makes sure the pinned toolchain has the standard library of each slice's
/// target, installing it with rustup (and saying so) when missing.
pub fn ensure_targets(root: &Path) -> Result<()> {
    let channel = toolchain::pinned_channel(root)?;
    let sh = toolchain::shell(root)?;
    let installed = cmd!(sh, "rustup target list --installed --toolchain {channel}")
        .quiet()
        .read()
        .with_context(|| {
            format!(
                "listing the installed targets of toolchain {channel} (rustup: https://rustup.rs)"
            )
        })?;
    for s in SLICES {
        if installed.lines().any(|l| l.trim() == s.triple) {
            continue;
        }
        eprintln!(
            "xtask: the {0} standard library is missing from toolchain {channel} (macOS executables need it); \
             running `rustup target add {0} --toolchain {channel}`",
            s.triple
        );
        let triple = s.triple;
        cmd!(sh, "rustup target add {triple} --toolchain {channel}")
            .quiet()
            .run()
            .with_context(|| {
                format!(
                    "could not install {triple}: run `rustup target add {triple} --toolchain {channel}`"
                )
            })?;
    }
    Ok(())
}

/// Checks the linker is there before any work starts.
fn ensure_linker() -> Result<()> {
    let sh = Shell::new().context("starting a shell for external commands")?;
    // Only whether it starts matters (its exit status is not looked at).
    match cmd!(sh, "{LINKER} --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .ignore_status()
        .run()
    {
        Ok(()) => Ok(()),
        Err(_) => bail!(
            "{LINKER} not found: macOS executables are linked with lld's Mach-O port \
             (Debian: apt-get install lld-19)"
        ),
    }
}

/// `cargo build` of `tools` for one slice; returns each tool's thin executable.
fn build_slice(
    root: &Path,
    target: &Path,
    sdk: &Path,
    slice: ToolSlice,
    release: bool,
    tools: &[String],
) -> Result<Vec<(String, PathBuf)>> {
    let env_triple = slice.triple.to_uppercase().replace('-', "_");
    let mut cmd = toolchain::clean_cargo(root);
    cmd.arg("build")
        .args(["--target", slice.triple])
        .arg("--message-format=json-render-diagnostics")
        .arg("--config")
        .arg(format!(
            "target.{}.rustflags=[\"-Clinker-flavor=ld64.lld\"]",
            slice.triple
        ))
        .env(format!("CARGO_TARGET_{env_triple}_LINKER"), LINKER)
        .env("CARGO_TARGET_DIR", target.join("macos"))
        .env("SDKROOT", sdk)
        .env("MACOSX_DEPLOYMENT_TARGET", slice.min_macos)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if release {
        cmd.arg("--release");
    }
    for t in tools {
        cmd.args(["-p", t, "--bin", t]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting cargo build for {}", slice.triple))?;
    let stdout = child.stdout.take().context("cargo build: no stdout")?;
    let mut found = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if tools.iter().any(|t| t == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!(
            "cargo build of {} for {} failed (see the errors above)",
            tools.join(", "),
            slice.triple
        );
    }
    for t in tools {
        if !found.iter().any(|(n, _)| n == t) {
            bail!(
                "cargo build for {} reported no executable {t}",
                slice.triple
            );
        }
    }
    Ok(found)
}

/// Where [`build`] writes the universal executables.
pub fn out_dir(target: &Path, release: bool) -> PathBuf {
    target
        .join("macos/universal-apple-darwin")
        .join(if release { "release" } else { "debug" })
}

/// Builds every tool for every slice and writes the universal executables.
/// `target`: the base output directory (the workspace's `target/`).
pub fn build(root: &Path, target: &Path, release: bool) -> Result<Vec<BuiltTool>> {
    // As for the kexts (crate::build::build_variant): nothing changed, the
    // executables stand.
    let name = format!("tools-{}", if release { "release" } else { "debug" });
    let fingerprint = crate::stamp::inputs(root, target, &name)?;
    if let Some(report) = crate::stamp::fresh(target, &name, &fingerprint)
        && let Some(built) = tools_from_report(&report)
    {
        return Ok(built);
    }
    crate::stamp::remove(target, &name);
    let built = build_unstamped(root, target, release)?;
    let outputs: Vec<PathBuf> = built.iter().map(|t| t.path.clone()).collect();
    let report = serde_json::Value::Array(
        built
            .iter()
            .map(|t| serde_json::json!({ "name": t.name, "path": t.path, "size": t.size }))
            .collect(),
    );
    crate::stamp::write(target, &name, &fingerprint, &outputs, report)?;
    Ok(built)
}

/// The executables a stamp recorded, unchanged.
fn tools_from_report(report: &serde_json::Value) -> Option<Vec<BuiltTool>> {
    report
        .as_array()?
        .iter()
        .map(|t| {
            Some(BuiltTool {
                name: t["name"].as_str()?.to_string(),
                path: PathBuf::from(t["path"].as_str()?),
                size: t["size"].as_u64()?,
                changed: false,
            })
        })
        .collect()
}

/// [`build`] without the stamp: every step runs.
fn build_unstamped(root: &Path, target: &Path, release: bool) -> Result<Vec<BuiltTool>> {
    let tools = tool_crates(root)?;
    if tools.is_empty() {
        return Ok(Vec::new());
    }
    ensure_linker()?;
    ensure_targets(root)?;
    let sdk = ensure_stub(target)?;
    let mut per_tool: Vec<(String, Vec<(ToolSlice, PathBuf)>)> =
        tools.iter().map(|t| (t.clone(), Vec::new())).collect();
    for slice in SLICES {
        eprintln!(
            "xtask: building {} for {} (macOS {}), linked by {LINKER}",
            tools.join(", "),
            slice.triple,
            slice.min_macos
        );
        for (name, exe) in build_slice(root, target, &sdk, slice, release, &tools)? {
            if let Some((_, v)) = per_tool.iter_mut().find(|(t, _)| *t == name) {
                v.push((slice, exe));
            }
        }
    }
    let dir = out_dir(target, release);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut built = Vec::new();
    for (name, parts) in per_tool {
        let bytes: Vec<Vec<u8>> = parts
            .iter()
            .map(|(_, p)| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .collect::<Result<_>>()?;
        let slices: Vec<kextld::fat::Slice<'_>> = parts
            .iter()
            .zip(&bytes)
            .map(|((s, _), b)| kextld::fat::Slice {
                cputype: s.cputype,
                cpusubtype: s.cpusubtype,
                align_log2: s.align_log2,
                bytes: b,
            })
            .collect();
        let universal = kextld::fat::write_slices(&slices)
            .with_context(|| format!("joining the slices of {name}"))?;
        let path = dir.join(&name);
        let changed = std::fs::read(&path).ok().as_deref() != Some(universal.as_slice());
        if changed {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &universal)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("moving {} into place", path.display()))?;
        }
        built.push(BuiltTool {
            name,
            path,
            size: universal.len() as u64,
            changed,
        });
    }
    Ok(built)
}

/// `cargo xtask build`'s step for the tools: build and print one line each.
pub fn build_and_report(root: &Path, target: &Path, release: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let built = build(root, target, release)?;
    for t in &built {
        let rel = t.path.strip_prefix(root).unwrap_or(&t.path);
        let archs: Vec<&str> = SLICES.iter().map(|s| s.arch).collect();
        println!(
            "{}  {} bytes  [{}]{}",
            rel.display(),
            t.size,
            archs.join(", "),
            if t.changed { "" } else { "  (up to date)" }
        );
    }
    eprintln!(
        "built {} macOS executable(s) in {:.1}s",
        built.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
