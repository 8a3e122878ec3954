//! `cargo xtask build`: compile the kext crates for the kernel targets, link each
//! with kextld, verify, and lay out the bundles.
//!
//! Steps, per architecture: `cargo build` with build-std and the kernel target
//! spec (artifacts found from `--message-format=json`), `kextld::link::link` on
//! the crate's staticlib, then per kext: `kextld::verify`, OSBundleLibraries from
//! the undefined symbols, Info.plist, and `packaging::bundle::write_bundle`
//! (which leaves an identical bundle untouched).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use kext_metadata::{Arch, KextMetadata, MinOs};
use kextld::kpi::KpiTables;

use crate::toolchain;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Optimised (`kernel-release` profile, output in `target/kext/release`)
    /// rather than `kernel-dev` (`target/kext/debug`).
    pub release: bool,
    /// Architectures to build; empty means all supported.
    pub archs: Vec<Arch>,
    /// Kext short names (`socket`, `ip`: crate `kext-<name>`); empty means all.
    pub kexts: Vec<String>,
    /// Base output directory (kernel builds in `<dir>/kernel`, bundles in
    /// `<dir>/kext/<profile>`); `None` means cargo's target directory
    /// ([`crate::target_dir`]: `CARGO_TARGET_DIR`, else the workspace's `target/`).
    pub target_dir: Option<PathBuf>,
}

impl BuildOptions {
    /// The base output directory.
    pub fn target_dir(&self, root: &Path) -> PathBuf {
        self.target_dir
            .clone()
            .unwrap_or_else(|| crate::target_dir(root))
    }
}

/// One bundle written (or found up to date).
#[derive(Debug, Clone)]
pub struct BuiltBundle {
    /// The crate, e.g. `kext-socket`.
    pub crate_name: String,
    /// `target/kext/<profile>/<Executable>.kext`.
    pub path: PathBuf,
    /// Size of `Contents/MacOS/<Executable>`.
    pub executable_size: u64,
    /// Slices in the executable.
    pub archs: Vec<Arch>,
    /// False when an identical bundle was already there (nothing rewritten).
    pub changed: bool,
}

/// Architectures `cargo xtask build` can produce today.
pub const SUPPORTED_ARCHS: [Arch; 2] = [Arch::X86_64, Arch::Arm64e];

/// The target spec for an architecture.
pub fn target_spec(root: &Path, arch: Arch) -> PathBuf {
    root.join("targets")
        .join(format!("{}-apple-macos-kernel.json", arch.name()))
}

/// `cargo metadata --no-deps` of the workspace, parsed; read once per
/// process and root (the kext and tool builds of one `cargo xtask build` both
/// need it: each `cargo metadata` costs about 0.1 s).
pub fn workspace_metadata(root: &Path) -> Result<serde_json::Value> {
    static CACHE: std::sync::Mutex<Vec<(PathBuf, serde_json::Value)>> =
        std::sync::Mutex::new(Vec::new());
    if let Ok(c) = CACHE.lock()
        && let Some((_, v)) = c.iter().find(|(r, _)| r == root)
    {
        return Ok(v.clone());
    }
    let sh = toolchain::shell(root)?;
    let out = crate::suite::clean_cargo(&sh)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .quiet()
        .read()
        .context("running cargo metadata (its errors are above)")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
    if let Ok(mut c) = CACHE.lock() {
        c.push((root.to_path_buf(), v.clone()));
    }
    Ok(v)
}

/// The kexts the workspace ships: `[workspace.metadata.prx] kexts`, each with
/// its validated `[package.metadata.kext]`.
pub fn kext_crates(root: &Path) -> Result<Vec<KextMetadata>> {
    let meta = workspace_metadata(root)?;
    let names = meta["metadata"]["prx"]["kexts"]
        .as_array()
        .context("Cargo.toml: [workspace.metadata.prx] kexts = [...] is missing")?;
    let mut kexts = Vec::new();
    for name in names {
        let name = name
            .as_str()
            .context("[workspace.metadata.prx] kexts: not a string")?;
        let pkg = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .with_context(|| {
                format!("[workspace.metadata.prx] kexts: no workspace package {name:?}")
            })?;
        let manifest = pkg["manifest_path"]
            .as_str()
            .context("cargo metadata: package without manifest_path")?;
        kexts.push(KextMetadata::load(Path::new(manifest))?);
    }
    kexts.sort_by(|a, b| a.crate_name.cmp(&b.crate_name));
    Ok(kexts)
}

/// A `cargo <subcommand>` (build, clippy, …) set up for the kernel target of
/// `arch`: build-std, the target spec, the kernel profile, a clean compiler
/// environment and its own target directory (`<target>/kernel`: build-std
/// artifacts are unlike any host build's).
pub fn kernel_cargo(
    root: &Path,
    target: &Path,
    subcommand: &str,
    arch: Arch,
    min_os: MinOs,
    release: bool,
) -> Command {
    let profile = if release {
        "kernel-release"
    } else {
        "kernel-dev"
    };
    let mut cmd = toolchain::clean_cargo(root);
    cmd.arg(subcommand)
        .args(["--profile", profile])
        .arg("--target")
        .arg(target_spec(root, arch))
        .args([
            "-Zjson-target-spec",
            "-Zbuild-std=core,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .arg("--config")
        .arg(format!(
            "profile.{profile}.package.compiler_builtins.codegen-units=10000"
        ))
        .env("CARGO_TARGET_DIR", target.join("kernel"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("MACOSX_DEPLOYMENT_TARGET", min_os.to_string())
        .env_remove("RUSTFLAGS")
        // No jump tables: on x86_64 Mach-O LLVM puts them inside __text
        // (data in code), which `kextld verify` (like kexts in general)
        // does not allow: it decodes __text as instructions throughout.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cjump-tables=no")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

/// Runs `cargo build` for `packages` on the kernel target of `arch` and returns
/// each package's staticlib, keyed by package name.
pub fn build_staticlibs(
    root: &Path,
    target: &Path,
    arch: Arch,
    min_os: MinOs,
    release: bool,
    packages: &[&str],
) -> Result<BTreeMap<String, PathBuf>> {
    build_staticlibs_with(root, target, arch, min_os, release, packages, &[])
}

/// [`build_staticlibs`] with extra `--cfg` settings for the compiler (tests'
/// variants only; see [`build_variant`]).
fn build_staticlibs_with(
    root: &Path,
    target: &Path,
    arch: Arch,
    min_os: MinOs,
    release: bool,
    packages: &[&str],
    cfgs: &[&str],
) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = kernel_cargo(root, target, "build", arch, min_os, release);
    if !cfgs.is_empty() {
        let mut flags = String::from("-Cjump-tables=no");
        for c in cfgs {
            flags.push_str("\x1f--cfg\x1f");
            flags.push_str(c);
        }
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    }
    cmd.arg("--message-format=json-render-diagnostics");
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .context("starting cargo build for the kernel target")?;
    let stdout = child.stdout.take().context("cargo build: no stdout")?;
    let mut libs = BTreeMap::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_staticlib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "staticlib"));
        // A package's library target is its name with '-' replaced by '_'.
        let target_name = msg["target"]["name"].as_str().unwrap_or_default();
        let Some(name) = packages.iter().find(|p| p.replace('-', "_") == target_name) else {
            continue;
        };
        if !is_staticlib {
            continue;
        }
        let name = name.to_string();
        let lib = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".a"))
            .with_context(|| format!("cargo reported no .a file for {name}"))?;
        libs.insert(name, PathBuf::from(lib));
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("cargo build for {arch} failed (see the errors above)");
    }
    for p in packages {
        if !libs.contains_key(*p) {
            bail!("cargo build for {arch} reported no staticlib for {p}");
        }
    }
    Ok(libs)
}

/// LC_SOURCE_VERSION from a crate version: `A.B.C` packed as A(24).B(10).C(10).0.0.
fn source_version(version: &str) -> u64 {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let a = parts.next().unwrap_or(0) & 0xFF_FFFF;
    let b = parts.next().unwrap_or(0) & 0x3FF;
    let c = parts.next().unwrap_or(0) & 0x3FF;
    (a << 40) | (b << 30) | (c << 20)
}

/// `cargo xtask build`.
pub fn build(root: &Path, opts: &BuildOptions) -> Result<Vec<BuiltBundle>> {
    build_variant(root, opts, &[])
}

/// [`build`] with extra `--cfg` settings (e.g. `prx_unmarked_slot="ipf_input"`)
/// passed to the compiler for every kernel crate. For tests' negative
/// controls: give such a build its own `target_dir`, since the settings change
/// every crate's build (the normal build's output is left alone).
pub fn build_variant(root: &Path, opts: &BuildOptions, cfgs: &[&str]) -> Result<Vec<BuiltBundle>> {
    // Nothing changed since the last build with these options: its bundles
    // stand (crate::stamp; the nested cargo, link, verify and bundle steps
    // are skipped).
    let (target, name, fingerprint) = stamp_of(root, opts, cfgs)?;
    if let Some(report) = crate::stamp::fresh(&target, &name, &fingerprint)
        && let Some(built) = bundles_from_report(&report)
    {
        return Ok(built);
    }
    crate::stamp::remove(&target, &name);
    let built = build_unstamped(root, opts, cfgs)?;
    let outputs: Vec<PathBuf> = built
        .iter()
        .flat_map(|b| crate::stamp::files_under(&b.path))
        .collect();
    crate::stamp::write(
        &target,
        &name,
        &fingerprint,
        &outputs,
        bundles_report(&built),
    )?;
    Ok(built)
}

/// True when [`build`] with `opts` would skip every step (its stamp is
/// fresh: nothing changed since it last ran).
pub fn up_to_date(root: &Path, opts: &BuildOptions) -> Result<bool> {
    let (target, name, fingerprint) = stamp_of(root, opts, &[])?;
    Ok(crate::stamp::fresh(&target, &name, &fingerprint)
        .as_ref()
        .and_then(bundles_from_report)
        .is_some())
}

/// The target directory, stamp name and input fingerprint of a build.
fn stamp_of(root: &Path, opts: &BuildOptions, cfgs: &[&str]) -> Result<(PathBuf, String, String)> {
    let target = opts.target_dir(root);
    let key = format!(
        "kexts release={} archs={:?} kexts={:?} cfgs={cfgs:?}",
        opts.release, opts.archs, opts.kexts
    );
    // One stamp per set of options, so alternating ones do not undo each other.
    let name = format!(
        "kexts-{}-{}",
        if opts.release { "release" } else { "debug" },
        crate::stamp::short_hash(&key)
    );
    let fingerprint = crate::stamp::inputs(root, &target, &key)?;
    Ok((target, name, fingerprint))
}

/// What a stamp keeps of the bundles a build wrote.
fn bundles_report(built: &[BuiltBundle]) -> serde_json::Value {
    serde_json::Value::Array(
        built
            .iter()
            .map(|b| {
                serde_json::json!({
                    "crate": b.crate_name,
                    "path": b.path,
                    "executable_size": b.executable_size,
                    "archs": b.archs.iter().map(|a| a.name()).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The bundles a stamp recorded, all unchanged (`None`: the stamp is not
/// one this xtask wrote).
fn bundles_from_report(report: &serde_json::Value) -> Option<Vec<BuiltBundle>> {
    report
        .as_array()?
        .iter()
        .map(|b| {
            Some(BuiltBundle {
                crate_name: b["crate"].as_str()?.to_string(),
                path: PathBuf::from(b["path"].as_str()?),
                executable_size: b["executable_size"].as_u64()?,
                archs: b["archs"]
                    .as_array()?
                    .iter()
                    .map(|a| a.as_str()?.parse().ok())
                    .collect::<Option<_>>()?,
                changed: false,
            })
        })
        .collect()
}

/// [`build_variant`] without the stamp: every step runs.
fn build_unstamped(root: &Path, opts: &BuildOptions, cfgs: &[&str]) -> Result<Vec<BuiltBundle>> {
    toolchain::ensure_rust_src(root)?;
    let archs: Vec<Arch> = if opts.archs.is_empty() {
        SUPPORTED_ARCHS.to_vec()
    } else {
        opts.archs.clone()
    };
    for arch in &archs {
        if !SUPPORTED_ARCHS.contains(arch) {
            bail!("--arch {arch}: not supported by this build yet (supported: x86_64, arm64e)");
        }
    }
    let all = kext_crates(root)?;
    let kexts: Vec<KextMetadata> = if opts.kexts.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for short in &opts.kexts {
            let name = format!("kext-{short}");
            let m = all.iter().find(|m| m.crate_name == name).with_context(|| {
                let known: Vec<&str> = all
                    .iter()
                    .map(|m| m.crate_name.strip_prefix("kext-").unwrap_or(&m.crate_name))
                    .collect();
                format!("--kext {short}: no such kext (known: {})", known.join(", "))
            })?;
            chosen.push(m.clone());
        }
        chosen
    };

    let target = opts.target_dir(root);
    let tables = KpiTables::builtin();
    // Per kext: one linked slice per architecture.
    let mut slices: BTreeMap<String, Vec<(Arch, MinOs, kextld::link::Linked)>> = BTreeMap::new();
    for &arch in &archs {
        // One cargo invocation per distinct deployment target.
        let mut by_min: BTreeMap<MinOs, Vec<&KextMetadata>> = BTreeMap::new();
        for k in &kexts {
            by_min.entry(k.min_macos(arch)).or_default().push(k);
        }
        for (min, group) in by_min {
            let names: Vec<&str> = group.iter().map(|k| k.crate_name.as_str()).collect();
            let libs = build_staticlibs_with(root, &target, arch, min, opts.release, &names, cfgs)?;
            for k in group {
                let lib = &libs[&k.crate_name];
                let linked = kextld::link::link(&kextld::link::LinkOptions {
                    arch,
                    min_os: min,
                    inputs: vec![lib.clone()],
                    source_version: source_version(&k.version),
                })
                .with_context(|| format!("linking {} for {arch}", k.crate_name))?;
                slices
                    .entry(k.crate_name.clone())
                    .or_default()
                    .push((arch, min, linked));
            }
        }
    }

    let out_dir = target
        .join("kext")
        .join(if opts.release { "release" } else { "debug" });
    let mut built = Vec::new();
    for k in &kexts {
        let Some(parts) = slices.get(&k.crate_name) else {
            continue;
        };
        let (executable, archs) = assemble(parts)?;
        let report = kextld::verify::verify(&executable, tables);
        if !report.is_ok() {
            bail!(
                "{}: kextld verify rejected the binary:\n{report}",
                k.crate_name
            );
        }
        check_kmod_identity(k, &report)?;
        let lowest = parts
            .iter()
            .map(|(_, m, _)| *m)
            .min()
            .unwrap_or(MinOs::X86_64_DEFAULT);
        let undefined: Vec<(Arch, &[String], MinOs)> = parts
            .iter()
            .map(|(arch, min, linked)| (*arch, linked.undefined.as_slice(), *min))
            .collect();
        let libraries = kextld::kpi::os_bundle_libraries_multi(tables, &undefined)
            .map_err(|e| anyhow::anyhow!("{}: {e}", k.crate_name))?;
        let plist = packaging::info_plist::generate(k, &libraries, lowest)
            .with_context(|| format!("generating Info.plist for {}", k.crate_name))?;
        let written = packaging::bundle::write_bundle(&out_dir, k, &plist, &executable)
            .with_context(|| format!("writing the bundle of {}", k.crate_name))?;
        built.push(BuiltBundle {
            crate_name: k.crate_name.clone(),
            path: written.path,
            executable_size: written.executable_size,
            archs,
            changed: written.changed,
        });
    }
    Ok(built)
}

/// The bundle executable: a single slice as is, several as a universal binary.
fn assemble(parts: &[(Arch, MinOs, kextld::link::Linked)]) -> Result<(Vec<u8>, Vec<Arch>)> {
    let archs: Vec<Arch> = parts.iter().map(|(a, _, _)| *a).collect();
    match parts {
        [(_, _, linked)] => Ok((linked.bytes.clone(), archs)),
        _ => {
            let slices: Vec<(Arch, &[u8])> = parts
                .iter()
                .map(|(a, _, l)| (*a, l.bytes.as_slice()))
                .collect();
            Ok((kextld::fat::write(&slices)?, archs))
        }
    }
}

/// The verifier decodes `_kmod_info`; its name and version must be the bundle's.
fn check_kmod_identity(k: &KextMetadata, report: &kextld::verify::Report) -> Result<()> {
    for slice in &report.slices {
        if slice.kmod_name.as_deref() != Some(k.bundle_identifier.as_str())
            || slice.kmod_version.as_deref() != Some(k.version.as_str())
        {
            bail!(
                "{}: _kmod_info of the {} slice says {:?} {:?}, but Cargo.toml says {} {}",
                k.crate_name,
                slice.arch.map_or("unknown", |a| a.name()),
                slice.kmod_name,
                slice.kmod_version,
                k.bundle_identifier,
                k.version
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_versions() {
        assert_eq!(source_version("1.2.3"), (1 << 40) | (2 << 30) | (3 << 20));
        assert_eq!(source_version("0.1.0-pre"), 1 << 30);
    }
}
