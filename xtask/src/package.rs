//! `cargo xtask package`: sign the kext bundles, write the installer and the
//! zip, optionally sign the installer, notarize and staple; `--check PKG`
//! expands a package the way Installer does.
//!
//! Steps: load the identities (a wrong password fails here, before anything is
//! written) → sign each bundle into a hidden staging directory inside the output
//! directory and verify it → build the unsigned product archive (a pure function
//! of the signed bundles and SOURCE_DATE_EPOCH) → sign it with the Installer
//! identity and verify → zip the signed bundles → rename the pkg and the zip
//! into place. Any error drops the staging directory, so no partial output is
//! left behind. With `--notarize` the prerequisites are checked first (API key,
//! Developer ID identities, time stamps), and the written pkg is then submitted;
//! `--staple` staples its ticket in place (temporary file + rename). A refused
//! or timed-out notarization leaves the signed, un-notarized pkg and fails.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use packaging::notary::api::{Endpoints, HttpNotary};
use packaging::notary::{self, ApiKey, NotaryService, WaitOptions};
use packaging::pkg::{self, KextInput, PkgSpec};
use packaging::sign::{self, Identity, IdentitySource, KextSignature, PasswordSource};

/// The default SOURCE_DATE_EPOCH (2026-01-01T00:00:00Z) when the variable is unset.
pub const DEFAULT_EPOCH: i64 = 1_767_225_600;

/// Identity options of one role (kexts or installer), as given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IdentityArgs {
    /// PKCS#12 file with the certificate and key.
    #[arg(long, value_name = "FILE")]
    pub p12: Option<PathBuf>,
    /// Environment variable holding the PKCS#12 password.
    #[arg(long, value_name = "VAR", conflicts_with = "p12_password_file")]
    pub p12_password_env: Option<String>,
    /// File whose first line is the PKCS#12 password.
    #[arg(long, value_name = "FILE")]
    pub p12_password_file: Option<PathBuf>,
    /// PEM private key (PKCS#8 or PKCS#1).
    #[arg(long, value_name = "FILE", conflicts_with = "p12")]
    pub key: Option<PathBuf>,
    /// PEM certificate(s): the signing certificate first, then its issuers.
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
}

impl IdentityArgs {
    /// The identity source; `None` when nothing was given. `prefix` is the
    /// flags' role prefix (`kext-`, `installer-` or empty), for error messages.
    /// A .p12 needs a password flag: checked here, before any file is read.
    pub fn source_for(&self, prefix: &str) -> Result<Option<IdentitySource>> {
        if let Some(p12) = &self.p12 {
            let password = match (&self.p12_password_env, &self.p12_password_file) {
                (Some(var), _) => PasswordSource::Env(var.clone()),
                (None, Some(f)) => PasswordSource::File(f.clone()),
                (None, None) => bail!(
                    "--{prefix}p12 {} needs its password: add --{prefix}p12-password-env VAR \
                     (a variable holding it) or --{prefix}p12-password-file FILE (its first line; \
                     an empty line for a .p12 without a password)",
                    p12.display()
                ),
            };
            if !p12.is_file() {
                bail!("--{prefix}p12 {}: no such file", p12.display());
            }
            return Ok(Some(IdentitySource::Pkcs12 {
                path: p12.clone(),
                password,
            }));
        }
        if self.p12_password_env.is_some() || self.p12_password_file.is_some() {
            bail!("--{prefix}p12-password-env/-file without --{prefix}p12 FILE: add the .p12 file");
        }
        if let Some(key) = &self.key {
            if self.certs.is_empty() {
                bail!("--{prefix}key needs --{prefix}cert (the certificate, then its issuers)");
            }
            return Ok(Some(IdentitySource::Pem {
                key: key.clone(),
                certs: self.certs.clone(),
            }));
        }
        if !self.certs.is_empty() {
            bail!("--{prefix}cert needs --{prefix}key (the PEM private key)");
        }
        Ok(None)
    }

    /// [`IdentityArgs::source_for`] with the unprefixed flag names.
    pub fn source(&self) -> Result<Option<IdentitySource>> {
        self.source_for("")
    }
}

/// What to package.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// The kext bundles (default: the release bundles of every workspace kext).
    pub bundles: Vec<PathBuf>,
    /// Output directory (default `target/pkg`).
    pub out_dir: PathBuf,
    /// Kext signing identity (ad-hoc when `AdHoc`).
    pub kext_identity: IdentitySource,
    /// Installer signing identity (`None`: unsigned pkg).
    pub installer_identity: Option<IdentitySource>,
    /// RFC 3161 time-stamp server for the signatures.
    pub timestamp_url: Option<String>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: i64,
    /// The pkg is going to be notarized: check the notarization prerequisites
    /// (Developer ID kext and Installer identities, valid now, time stamps)
    /// before anything is written.
    pub notarize: bool,
    /// The macOS tools for `/usr/local/bin` and `/usr/local/libexec`
    /// (`packaging::pkg::system::tool_path`; universal executables, unsigned;
    /// signed here with the kext identity: ad-hoc, or Developer ID Application
    /// with the hardened runtime). Default: [`default_tools`].
    pub tools: Vec<PathBuf>,
    /// The example configuration (default `prxctl/prx.toml.example`).
    pub example_config: PathBuf,
    /// `bundles` are the defaults (not given with --bundle): decides the
    /// advice when one is missing.
    pub default_bundles: bool,
}

/// The error for a bundle that is not there: the default bundles are made by
/// `cargo xtask build --release`; a `--bundle` path is the user's.
fn missing_bundle(b: &Path, default: bool) -> String {
    if default {
        format!(
            "missing kext bundle {}: run `cargo xtask build --release` first (or pass --bundle DIR)",
            b.display()
        )
    } else if !b.exists() {
        format!("--bundle {}: no such directory", b.display())
    } else {
        format!(
            "--bundle {}: not a kext bundle (no Contents/Info.plist): pass the .kext directory",
            b.display()
        )
    }
}

/// What `package` produced.
#[derive(Debug, Clone)]
pub struct Packaged {
    /// `<out>/prx-<version>.pkg`.
    pub pkg: PathBuf,
    /// `<out>/prx-<version>-kexts.zip`.
    pub zip: PathBuf,
    /// Per bundle: name and its verified signature.
    pub kexts: Vec<(String, KextSignature)>,
    /// Signer of the pkg, if signed.
    pub pkg_signer: Option<String>,
    /// Per tool: name and its verified signature.
    pub tools: Vec<(String, KextSignature)>,
}

/// SOURCE_DATE_EPOCH from the environment, or [`DEFAULT_EPOCH`].
pub fn epoch_from_env() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|e| (0..=i64::from(u32::MAX)).contains(e))
            .with_context(|| {
                format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds in 0..2^32")
            }),
        Err(_) => Ok(DEFAULT_EPOCH),
    }
}

/// The default bundles: `<target>/kext/release/<Executable>.kext` per workspace
/// kext (`<target>`: `CARGO_TARGET_DIR`, else `target`).
pub fn default_bundles(root: &Path) -> Result<Vec<PathBuf>> {
    let kexts = crate::build::kext_crates(root)?;
    Ok(kexts
        .iter()
        .map(|k| {
            crate::target_dir(root)
                .join("kext/release")
                .join(format!("{}.kext", k.executable))
        })
        .collect())
}

/// The default tools: `<target>/macos/universal-apple-darwin/release/<tool>` per
/// `[workspace.metadata.prx] tools`.
pub fn default_tools(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = crate::tools::out_dir(&crate::target_dir(root), true);
    Ok(crate::tools::tool_crates(root)?
        .iter()
        .map(|t| dir.join(t))
        .collect())
}

/// The example configuration shipped as `prx.toml.example`.
pub fn default_example_config(root: &Path) -> PathBuf {
    root.join("prxctl/prx.toml.example")
}

fn plist_string(dict: &plist::Dictionary, key: &str, bundle: &Path) -> Result<String> {
    dict.get(key)
        .and_then(|v| v.as_string())
        .map(str::to_string)
        .with_context(|| format!("{}: Info.plist has no {key}", bundle.display()))
}

/// Lowest `OSBundleRequired`-independent minimum macOS across the bundles:
/// the smallest LSMinimumSystemVersion (or 10.13 when absent).
fn min_os(dicts: &[plist::Dictionary]) -> String {
    let mut best: Option<(Vec<u32>, String)> = None;
    for d in dicts {
        let v = d
            .get("LSMinimumSystemVersion")
            .and_then(|v| v.as_string())
            .unwrap_or("10.13")
            .to_string();
        let key: Vec<u32> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        if best.as_ref().is_none_or(|b| key < b.0) {
            best = Some((key, v));
        }
    }
    best.map_or_else(|| "10.13".into(), |b| b.1)
}

/// `cargo xtask package`.
pub fn package(opts: &PackageOptions) -> Result<Packaged> {
    // Inputs first: nothing is created before they are all there.
    if opts.bundles.is_empty() {
        bail!("no kext bundles to package");
    }
    for b in &opts.bundles {
        if !b.join("Contents/Info.plist").is_file() {
            bail!("{}", missing_bundle(b, opts.default_bundles));
        }
    }
    // The identities first of the remaining inputs: a wrong password or a
    // missing variable is the likeliest mistake and names itself.
    let kext_identity =
        Identity::load(&opts.kext_identity).context("loading the kext signing identity")?;
    let installer_identity = match &opts.installer_identity {
        Some(src) => Some(
            Identity::load(src)
                .context("loading the installer signing identity")?
                .context("the installer identity cannot be ad-hoc: a pkg is signed with a Developer ID Installer certificate or not at all")?,
        ),
        None => None,
    };
    if opts.notarize {
        let now = chrono::Utc::now();
        let ts = opts.timestamp_url.as_deref();
        sign::check_notarizable(kext_identity.as_ref(), sign::Purpose::Kext, ts, now)?;
        sign::check_notarizable(
            installer_identity.as_ref(),
            sign::Purpose::Installer,
            ts,
            now,
        )?;
    }
    for t in &opts.tools {
        if !t.is_file() {
            bail!(
                "missing macOS executable {}: run `cargo xtask build --release` first",
                t.display()
            );
        }
    }
    let example_config = std::fs::read(&opts.example_config).with_context(|| {
        format!(
            "reading the example configuration {}",
            opts.example_config.display()
        )
    })?;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| {
        format!(
            "{}: cannot create the output directory",
            opts.out_dir.display()
        )
    })?;
    let staging = tempfile::Builder::new()
        .prefix(".prx-package-")
        .tempdir_in(&opts.out_dir)
        .with_context(|| {
            format!(
                "{}: output directory is not writable",
                opts.out_dir.display()
            )
        })?;

    // Sign and verify each bundle.
    let mut kexts = Vec::new();
    let mut inputs = Vec::new();
    let mut dicts = Vec::new();
    for b in &opts.bundles {
        let name = b
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: bad bundle name", b.display()))?
            .to_string();
        let signed = staging.path().join("kexts").join(&name);
        std::fs::create_dir_all(staging.path().join("kexts"))?;
        sign::sign_kext(
            b,
            &signed,
            kext_identity.as_ref(),
            opts.timestamp_url.as_deref(),
        )?;
        let sig = sign::verify_kext(&signed)?;
        let dict = plist::Value::from_file(signed.join("Contents/Info.plist"))
            .with_context(|| format!("{}: reading Info.plist", signed.display()))?
            .into_dictionary()
            .with_context(|| format!("{}: Info.plist is not a dictionary", signed.display()))?;
        inputs.push(KextInput {
            bundle: signed,
            bundle_identifier: plist_string(&dict, "CFBundleIdentifier", b)?,
            version: plist_string(&dict, "CFBundleVersion", b)?,
        });
        dicts.push(dict);
        kexts.push((name, sig));
    }
    let version = inputs[0].version.clone();
    if let Some(k) = inputs.iter().find(|k| k.version != version) {
        bail!(
            "the kexts have different versions ({} is {}, {} is {}): one package has one version",
            inputs[0].bundle_identifier,
            version,
            k.bundle_identifier,
            k.version
        );
    }
    // net.prx.kext.SocketFilter -> net.prx.kext.pkg
    let base = inputs[0]
        .bundle_identifier
        .rsplit_once('.')
        .map_or(inputs[0].bundle_identifier.as_str(), |(a, _)| a);
    // The tools: signed like the kexts' identity says (ad-hoc, or Developer ID
    // Application with the hardened runtime and the time stamp), then verified.
    let org = base.rsplit_once('.').map_or(base, |(a, _)| a);
    let mut tools = Vec::new();
    let mut tool_inputs = Vec::new();
    for t in &opts.tools {
        let name = t
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: bad executable name", t.display()))?
            .to_string();
        std::fs::create_dir_all(staging.path().join("tools"))?;
        let signed = staging.path().join("tools").join(&name);
        sign::sign_executable(
            t,
            &signed,
            &format!("{org}.{name}"),
            kext_identity.as_ref(),
            opts.timestamp_url.as_deref(),
        )?;
        tools.push((name.clone(), sign::verify_executable(&signed)?));
        tool_inputs.push(pkg::system::ToolInput { path: signed, name });
    }
    let spec = PkgSpec {
        identifier: format!("{base}.pkg"),
        version: version.clone(),
        title: format!("prx network filters {version}"),
        min_os: min_os(&dicts),
        host_architectures: "x86_64,arm64".into(),
        require_restart: true,
        epoch: opts.epoch,
        kexts: inputs,
        tools: tool_inputs,
        example_config,
    };

    let unsigned = pkg::build_unsigned(&spec)?;
    let mut pkg_signer = None;
    let pkg_bytes = match &installer_identity {
        None => unsigned,
        Some(id) => {
            let signed = packaging::xar::sign(
                &unsigned,
                &id.key,
                &id.cert,
                &id.chain,
                opts.timestamp_url.as_deref(),
            )?;
            let v = packaging::xar::verify(&signed)?;
            if !(v.rsa_signature && v.cms_signature) {
                bail!("the signed pkg lacks an RSA or CMS signature (internal error)");
            }
            pkg_signer = v.signer;
            signed
        }
    };
    let tree = pkg::payload_tree(&spec)?;
    let zip_bytes = packaging::zip_kexts::zip_tree(&tree, opts.epoch)?;

    let pkg_name = format!("prx-{version}.pkg");
    let zip_name = format!("prx-{version}-kexts.zip");
    let staged_pkg = staging.path().join(&pkg_name);
    let staged_zip = staging.path().join(&zip_name);
    std::fs::write(&staged_pkg, &pkg_bytes)
        .with_context(|| format!("writing {}", staged_pkg.display()))?;
    std::fs::write(&staged_zip, &zip_bytes)
        .with_context(|| format!("writing {}", staged_zip.display()))?;

    let pkg_path = opts.out_dir.join(&pkg_name);
    let zip_path = opts.out_dir.join(&zip_name);
    std::fs::rename(&staged_pkg, &pkg_path)
        .with_context(|| format!("moving the pkg to {}", pkg_path.display()))?;
    if let Err(e) = std::fs::rename(&staged_zip, &zip_path) {
        let _ = std::fs::remove_file(&pkg_path);
        return Err(e).with_context(|| format!("moving the zip to {}", zip_path.display()));
    }
    Ok(Packaged {
        pkg: pkg_path,
        zip: zip_path,
        kexts,
        pkg_signer,
        tools,
    })
}

/// `cargo xtask package --check PKG`: expand into a temporary staging root and
/// return the report.
pub fn check(pkg_path: &Path) -> Result<pkg::check::CheckReport> {
    let staging = tempfile::tempdir().context("creating a staging root")?;
    let report = pkg::check::check(pkg_path, staging.path()).map_err(|e| {
        // Name the package once: most errors already start with its path.
        let shown = pkg_path.display().to_string();
        let msg = e.to_string();
        if msg.contains(&shown) {
            anyhow::Error::msg(msg)
        } else {
            anyhow::Error::msg(format!("checking {shown}: {msg}"))
        }
    })?;
    let mut problems = Vec::new();
    for c in &report.components {
        if c.install_location != pkg::INSTALL_LOCATION {
            problems.push(format!(
                "{}: install location {} is not {}",
                c.name,
                c.install_location,
                pkg::INSTALL_LOCATION
            ));
        }
        for i in &c.installed {
            if i.uid != 0 || i.gid != 0 {
                problems.push(format!(
                    "{} is owned by {}:{}, not root:wheel",
                    i.path, i.uid, i.gid
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!("{report}\n{}", problems.join("\n"));
    }
    Ok(report)
}

/// `cargo xtask package` command-line arguments. Secrets are never arguments:
/// a PKCS#12 password comes from `--*-p12-password-env VAR` or
/// `--*-p12-password-file FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Expand and check this package instead of building one.
    #[arg(long, value_name = "PKG")]
    pub check: Option<PathBuf>,
    /// Kext bundle(s) to package (default: target/kext/release/<each kext>.kext).
    #[arg(long = "bundle", value_name = "DIR")]
    pub bundles: Vec<PathBuf>,
    /// Output directory (default: <target>/pkg, <target> being $CARGO_TARGET_DIR or target).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Kext identity (Developer ID Application): ad-hoc when none is given.
    #[command(flatten, next_help_heading = "Kext signing (Developer ID Application)")]
    pub kext: KextIdentityArgs,
    /// Installer identity (Developer ID Installer): unsigned pkg when none is given.
    #[command(
        flatten,
        next_help_heading = "Installer signing (Developer ID Installer)"
    )]
    pub installer: InstallerIdentityArgs,
    /// RFC 3161 time-stamp server (Apple's: http://timestamp.apple.com/ts01;
    /// required for notarization).
    #[arg(long, value_name = "URL")]
    pub timestamp_url: Option<String>,
    /// Notarize the pkg with Apple's Notary API (needs Developer ID kext and
    /// Installer identities, --timestamp-url and an API key).
    #[arg(long, help_heading = "Notarization")]
    pub notarize: bool,
    /// App Store Connect API key, JSON {"issuer_id","key_id","private_key"} (the
    /// format of `rcodesign encode-app-store-connect-api-key`); default: the
    /// file named by $PRX_NOTARY_API_KEY.
    #[arg(
        long,
        value_name = "FILE",
        requires = "notarize",
        help_heading = "Notarization"
    )]
    pub api_key: Option<PathBuf>,
    /// Give up waiting for Apple's verdict after this many seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 1800,
        requires = "notarize",
        help_heading = "Notarization"
    )]
    pub wait_timeout: u64,
    /// Seconds between status requests.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        requires = "notarize",
        help_heading = "Notarization"
    )]
    pub poll_interval: u64,
    /// Once accepted, staple the notarization ticket to the pkg.
    #[arg(long, requires = "notarize", help_heading = "Notarization")]
    pub staple: bool,
}

/// Environment variable naming the API key file when --api-key is not given.
pub const API_KEY_ENV: &str = "PRX_NOTARY_API_KEY";

/// The notary endpoints: Apple's, unless overridden by `PRX_NOTARY_URL`,
/// `PRX_NOTARY_S3_URL`, `PRX_NOTARY_TICKET_URL` (for testing against a stub).
pub fn notary_endpoints() -> Endpoints {
    let mut e = Endpoints::default();
    if let Ok(v) = std::env::var("PRX_NOTARY_URL") {
        e.notary = v;
    }
    if let Ok(v) = std::env::var("PRX_NOTARY_S3_URL") {
        e.s3 = Some(v);
    }
    if let Ok(v) = std::env::var("PRX_NOTARY_TICKET_URL") {
        e.ticket_lookup = v;
    }
    e
}

/// Notarizes the written pkg at `pkg_path` and, with `staple`, staples the
/// ticket to it in place (atomically). Progress lines go to `progress`.
pub fn notarize(
    service: &dyn NotaryService,
    pkg_path: &Path,
    wait: WaitOptions,
    staple: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let bytes =
        std::fs::read(pkg_path).with_context(|| format!("reading {}", pkg_path.display()))?;
    let name = pkg_path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the pkg has no file name")?;
    let id = notary::notarize(service, name, &bytes, wait, progress)?;
    progress(&format!("notarization: {name} accepted (submission {id})"));
    if staple {
        let record = notary::staple_pkg_file(service, pkg_path)
            .with_context(|| format!("stapling {}", pkg_path.display()))?;
        progress(&format!(
            "stapled the notarization ticket ({record}) to {}",
            pkg_path.display()
        ));
    }
    Ok(())
}

/// `--kext-*` identity flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KextIdentityArgs {
    /// PKCS#12 file.
    #[arg(long = "kext-p12", id = "kext-p12", value_name = "FILE")]
    pub p12: Option<PathBuf>,
    /// Environment variable holding its password.
    #[arg(
        long = "kext-p12-password-env",
        id = "kext-p12-password-env",
        value_name = "VAR"
    )]
    pub p12_password_env: Option<String>,
    /// File whose first line is its password.
    #[arg(
        long = "kext-p12-password-file",
        id = "kext-p12-password-file",
        value_name = "FILE"
    )]
    pub p12_password_file: Option<PathBuf>,
    /// PEM private key.
    #[arg(long = "kext-key", id = "kext-key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// PEM certificate(s), signing certificate first.
    #[arg(long = "kext-cert", id = "kext-cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
}

/// `--installer-*` identity flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstallerIdentityArgs {
    /// PKCS#12 file.
    #[arg(long = "installer-p12", id = "installer-p12", value_name = "FILE")]
    pub p12: Option<PathBuf>,
    /// Environment variable holding its password.
    #[arg(
        long = "installer-p12-password-env",
        id = "installer-p12-password-env",
        value_name = "VAR"
    )]
    pub p12_password_env: Option<String>,
    /// File whose first line is its password.
    #[arg(
        long = "installer-p12-password-file",
        id = "installer-p12-password-file",
        value_name = "FILE"
    )]
    pub p12_password_file: Option<PathBuf>,
    /// PEM private key.
    #[arg(long = "installer-key", id = "installer-key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// PEM certificate(s), signing certificate first.
    #[arg(long = "installer-cert", id = "installer-cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
}

impl From<&KextIdentityArgs> for IdentityArgs {
    fn from(a: &KextIdentityArgs) -> IdentityArgs {
        IdentityArgs {
            p12: a.p12.clone(),
            p12_password_env: a.p12_password_env.clone(),
            p12_password_file: a.p12_password_file.clone(),
            key: a.key.clone(),
            certs: a.certs.clone(),
        }
    }
}

impl From<&InstallerIdentityArgs> for IdentityArgs {
    fn from(a: &InstallerIdentityArgs) -> IdentityArgs {
        IdentityArgs {
            p12: a.p12.clone(),
            p12_password_env: a.p12_password_env.clone(),
            p12_password_file: a.p12_password_file.clone(),
            key: a.key.clone(),
            certs: a.certs.clone(),
        }
    }
}

/// Runs `cargo xtask package`.
pub fn run(root: &Path, args: Args) -> Result<()> {
    if let Some(pkg) = &args.check {
        if !pkg.is_file() {
            bail!("--check {}: no such file", pkg.display());
        }
        let report = check(pkg)?;
        print!("{report}");
        println!(
            "ok: {} installs as root:wheel into {}",
            pkg.display(),
            pkg::INSTALL_LOCATION
        );
        return Ok(());
    }
    // The API key is read first: a bad one fails before anything is written.
    let service = if args.notarize {
        let path = match &args.api_key {
            Some(p) => p.clone(),
            None => std::env::var_os(API_KEY_ENV).map(PathBuf::from).with_context(|| {
                format!("--notarize needs --api-key FILE or ${API_KEY_ENV} (App Store Connect API key JSON)")
            })?,
        };
        let key = ApiKey::from_file(&path)?;
        Some(HttpNotary::new(key, notary_endpoints())?)
    } else {
        None
    };
    let out_dir = match &args.out {
        Some(o) if o.is_absolute() => o.clone(),
        Some(o) => root.join(o),
        None => crate::target_dir(root).join("pkg"),
    };
    // Usage first: every flag is checked before anything is read or written.
    let kext_identity = IdentityArgs::from(&args.kext)
        .source_for("kext-")?
        .unwrap_or(IdentitySource::AdHoc);
    let installer_identity = IdentityArgs::from(&args.installer).source_for("installer-")?;
    for b in &args.bundles {
        if !b.join("Contents/Info.plist").is_file() {
            bail!("{}", missing_bundle(b, false));
        }
    }
    let opts = PackageOptions {
        default_bundles: args.bundles.is_empty(),
        bundles: if args.bundles.is_empty() {
            default_bundles(root)?
        } else {
            args.bundles.clone()
        },
        out_dir,
        kext_identity,
        installer_identity,
        timestamp_url: args.timestamp_url.clone(),
        epoch: epoch_from_env()?,
        notarize: args.notarize,
        tools: default_tools(root)?,
        example_config: default_example_config(root),
    };
    let done = package(&opts)?;
    for (name, sig) in &done.kexts {
        println!(
            "{name}: signed {} ({} slice(s), identifier {}, team {}, flags {:#x}), verified",
            sig.signer
                .as_deref()
                .map_or("ad-hoc".to_string(), |s| format!("by {s:?}")),
            sig.slices,
            sig.identifier,
            sig.team_id.as_deref().unwrap_or("none"),
            sig.flags
        );
    }
    for (name, sig) in &done.tools {
        println!(
            "{name}: signed {} ({} slice(s), identifier {}, flags {:#x}{}), verified",
            sig.signer
                .as_deref()
                .map_or("ad-hoc".to_string(), |s| format!("by {s:?}")),
            sig.slices,
            sig.identifier,
            sig.flags,
            if sig.flags & 0x1_0000 != 0 {
                ", hardened runtime"
            } else {
                ""
            }
        );
    }
    let size = std::fs::metadata(&done.pkg).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}  {size} bytes  {}",
        done.pkg.display(),
        done.pkg_signer
            .as_deref()
            .map_or("unsigned".to_string(), |s| format!("signed by {s:?}"))
    );
    println!("{}", done.zip.display());
    if let Some(service) = &service {
        let wait = WaitOptions {
            timeout: std::time::Duration::from_secs(args.wait_timeout),
            poll_interval: std::time::Duration::from_secs(args.poll_interval.max(1)),
        };
        notarize(service, &done.pkg, wait, args.staple, &mut |l| {
            println!("{l}")
        })?;
    }
    Ok(())
}
