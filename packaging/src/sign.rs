//! Codesigning the kext bundles with `apple-codesign`, and the signing
//! identities (`Developer ID Application` for kexts, `Developer ID Installer`
//! for the pkg).
//!
//! Glossary:
//! - **ad-hoc signature**: code directory with digests, no certificate (the
//!   default: development). Kexts must be Developer ID signed to load on a
//!   machine with the default security policy.
//! - **identity**: a private key plus its certificate and chain, from a PKCS#12
//!   file (password from an environment variable or a file: never a command-line
//!   argument, never printed) or from PEM files (PKCS#8 or PKCS#1 key,
//!   certificates).
//! - **team id**: the certificate's OU; recorded in the code directory.
//!
//! Kexts do not use the hardened runtime, so the signing settings never set
//! `for_notarization` (which forces the RUNTIME flag); [`check_notarizable`]
//! checks the notarization prerequisites instead.

use std::fmt;
use std::path::{Path, PathBuf};

use apple_codesign::cryptography::InMemoryPrivateKey;
use apple_codesign::{
    AppleCertificate, CertificateProfile, CodeSignatureFlags, MachFile, SettingsScope,
    SigningSettings, UnifiedSigner,
};
use x509_certificate::CapturedX509Certificate;

/// Errors from loading identities, signing and verifying.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Reading an input failed.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity could not be loaded.
    #[error("{0}")]
    Identity(String),
    /// apple-codesign refused to sign.
    #[error("signing {path}: {message}")]
    Sign {
        /// What was being signed.
        path: PathBuf,
        /// apple-codesign's error.
        message: String,
    },
    /// A signature did not verify.
    #[error("{path}: signature does not verify: {message}")]
    Verify {
        /// The bundle or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The identity cannot be used for what was asked (notarization).
    #[error("{0}")]
    Policy(String),
}

/// A secret read from the environment or a file; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The secret itself (only passed to the PKCS#12 decoder).
    fn expose(&self) -> &str {
        &self.0
    }
}

/// Where a PKCS#12 password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The named environment variable.
    Env(String),
    /// The first line of a file.
    File(PathBuf),
    /// No password (an empty one).
    Empty,
}

impl PasswordSource {
    /// Reads the password. Errors name the variable or file, never the value.
    pub fn read(&self) -> Result<Secret, SignError> {
        match self {
            PasswordSource::Env(var) => std::env::var(var).map(Secret).map_err(|_| {
                SignError::Identity(format!(
                    "the PKCS#12 password variable {var} is not set (or not UTF-8)"
                ))
            }),
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SignError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(Secret(text.lines().next().unwrap_or("").to_string()))
            }
            PasswordSource::Empty => Ok(Secret(String::new())),
        }
    }
}

/// Where a signing identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// Ad-hoc: no certificate.
    AdHoc,
    /// A PKCS#12 (.p12/.pfx) file and where its password comes from.
    Pkcs12 {
        /// The .p12 file.
        path: PathBuf,
        /// Its password.
        password: PasswordSource,
    },
    /// PEM files: a private key (PKCS#8 or PKCS#1) and certificates, the
    /// signing certificate first, then its issuers.
    Pem {
        /// The private key.
        key: PathBuf,
        /// The certificate chain files.
        certs: Vec<PathBuf>,
    },
}

/// A loaded identity.
pub struct Identity {
    /// The private key.
    pub key: InMemoryPrivateKey,
    /// The signing certificate.
    pub cert: CapturedX509Certificate,
    /// Further certificates to embed (issuers).
    pub chain: Vec<CapturedX509Certificate>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert", &self.cert.subject_common_name())
            .field("team_id", &self.team_id())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SignError> {
    std::fs::read(path).map_err(|source| SignError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The algorithms [`parse_pkcs12`] reads, for error messages.
pub const PKCS12_SUPPORTED: &str = "PBES2 (PBKDF2 with AES-CBC: OpenSSL 3's default), \
pbeWithSHAAnd3-KeyTripleDES-CBC and pbeWithSHAAnd40BitRC2-CBC (`openssl pkcs12 -legacy`, \
Keychain Access exports); MACs HMAC-SHA-1 and HMAC-SHA-2";

/// Decodes a PKCS#12 file: the private key, the certificate that goes with
/// it and the further certificates (its issuers). Reads what OpenSSL 3 writes
/// by default (PBES2/AES-256-CBC, HMAC-SHA-256 MAC), what `openssl pkcs12
/// -legacy` and Keychain Access write (3DES/RC2-40, HMAC-SHA-1), with the
/// `p12-keystore` crate. Errors say "wrong password" when the MAC (or, for a
/// file without one, the padding) does not check out, and name the supported
/// algorithms for anything else it cannot decrypt.
pub fn parse_pkcs12(
    data: &[u8],
    password: &str,
) -> Result<
    (
        InMemoryPrivateKey,
        CapturedX509Certificate,
        Vec<CapturedX509Certificate>,
    ),
    String,
> {
    use p12_keystore::error::Error as P12Error;
    use p12_keystore::{KeyStore, Pkcs12ImportPolicy};
    let store = KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Relaxed).map_err(
        |e| match e {
            P12Error::MacError(_) => "wrong password".to_string(),
            P12Error::UnpadError | P12Error::Pkcs5Error(_) => {
                format!("wrong password (or a damaged file: {e})")
            }
            P12Error::UnsupportedEncryptionScheme | P12Error::UnsupportedMacAlgorithm => format!(
                "it is protected with an algorithm prx does not read (supported: {PKCS12_SUPPORTED}); \
                 export it again with `openssl pkcs12 -export` or from Keychain Access"
            ),
            P12Error::DerError(e) => format!("not a PKCS#12 file ({e})"),
            other => format!("not a usable PKCS#12 file ({other})"),
        },
    )?;
    let (alias, chain) = store.private_key_chain().ok_or_else(|| {
        "it holds no private key (export the certificate together with its key: \
         in Keychain Access, select the identity under My Certificates)"
            .to_string()
    })?;
    let key = InMemoryPrivateKey::from_pkcs8_der(chain.key().as_der())
        .map_err(|e| format!("the private key of {alias:?} is not usable: {e}"))?;
    let mut certs = Vec::new();
    for c in chain.certs() {
        certs.push(
            CapturedX509Certificate::from_der(c.as_der().to_vec())
                .map_err(|e| format!("bad certificate {:?}: {e}", c.subject()))?,
        );
    }
    if certs.is_empty() {
        return Err(format!(
            "it holds no certificate for the private key {alias:?} (export the identity, not the key alone)"
        ));
    }
    let cert = certs.remove(0);
    Ok((key, cert, certs))
}

impl Identity {
    /// Loads `source`; `Ok(None)` for ad-hoc.
    pub fn load(source: &IdentitySource) -> Result<Option<Identity>, SignError> {
        match source {
            IdentitySource::AdHoc => Ok(None),
            IdentitySource::Pkcs12 { path, password } => {
                let data = read(path)?;
                let password = password.read()?;
                let (key, cert, chain) = parse_pkcs12(&data, password.expose()).map_err(|why| {
                    SignError::Identity(format!(
                        "{}: cannot open the PKCS#12 file: {why}",
                        path.display()
                    ))
                })?;
                Ok(Some(Identity { key, cert, chain }))
            }
            IdentitySource::Pem { key, certs } => {
                let key_data = read(key)?;
                let pems = pem::parse_many(&key_data)
                    .map_err(|e| SignError::Identity(format!("{}: not PEM: {e}", key.display())))?;
                let key_pem = pems
                    .iter()
                    .find(|p| p.tag().ends_with("PRIVATE KEY"))
                    .ok_or_else(|| {
                        SignError::Identity(format!("{}: no PRIVATE KEY block", key.display()))
                    })?;
                let private = if key_pem.tag() == "RSA PRIVATE KEY" {
                    InMemoryPrivateKey::from_pkcs1_der(key_pem.contents())
                } else {
                    InMemoryPrivateKey::from_pkcs8_der(key_pem.contents())
                }
                .map_err(|e| {
                    SignError::Identity(format!("{}: bad private key: {e}", key.display()))
                })?;
                let mut all = Vec::new();
                for c in certs {
                    let parsed =
                        CapturedX509Certificate::from_pem_multiple(read(c)?).map_err(|e| {
                            SignError::Identity(format!("{}: bad certificate: {e}", c.display()))
                        })?;
                    all.extend(parsed);
                }
                if all.is_empty() {
                    return Err(SignError::Identity(
                        "a PEM identity needs at least one certificate (--cert)".into(),
                    ));
                }
                let cert = all.remove(0);
                Ok(Some(Identity {
                    key: private,
                    cert,
                    chain: all,
                }))
            }
        }
    }

    /// The team id (certificate OU), if any.
    pub fn team_id(&self) -> Option<String> {
        self.cert.apple_team_id()
    }

    /// The certificate profile apple-codesign recognises, if any.
    pub fn profile(&self) -> Option<CertificateProfile> {
        self.cert.apple_guess_profile()
    }

    /// Common name of the certificate.
    pub fn name(&self) -> String {
        self.cert
            .subject_common_name()
            .unwrap_or_else(|| "(no common name)".into())
    }
}

/// What the package is going to be used for: decides the checks in
/// [`check_notarizable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Signing the kexts (needs Developer ID Application).
    Kext,
    /// Signing the pkg (needs Developer ID Installer).
    Installer,
}

/// Checks what notarization requires of an identity, which apple-codesign does
/// not check for kexts (we cannot use `for_notarization`): a Developer ID
/// certificate of the right kind, currently valid, and a time-stamp server.
pub fn check_notarizable(
    identity: Option<&Identity>,
    purpose: Purpose,
    timestamp_url: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), SignError> {
    let what = match purpose {
        Purpose::Kext => "kexts",
        Purpose::Installer => "the pkg",
    };
    let Some(id) = identity else {
        return Err(SignError::Policy(format!(
            "notarization needs {what} signed with a Developer ID certificate, not ad-hoc"
        )));
    };
    let (wanted, name) = match purpose {
        Purpose::Kext => (
            CertificateProfile::DeveloperIdApplication,
            "Developer ID Application",
        ),
        Purpose::Installer => (
            CertificateProfile::DeveloperIdInstaller,
            "Developer ID Installer",
        ),
    };
    if id.profile() != Some(wanted) {
        return Err(SignError::Policy(format!(
            "notarization: the certificate for {what} ({:?}) is not a {name} certificate (it looks like {})",
            id.name(),
            id.profile()
                .map_or("no Apple profile".to_string(), |p| format!("{p:?}"))
        )));
    }
    if !id.cert.time_constraints_valid(Some(now)) {
        return Err(SignError::Policy(format!(
            "notarization: the certificate for {what} ({:?}) is not valid now (valid {} to {})",
            id.name(),
            id.cert.validity_not_before(),
            id.cert.validity_not_after()
        )));
    }
    if timestamp_url.is_none() {
        return Err(SignError::Policy(
            "notarization needs a secure timestamp: pass --timestamp-url (Apple's is http://timestamp.apple.com/ts01)".into(),
        ));
    }
    Ok(())
}

/// What a kext signature looks like after [`verify_kext`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KextSignature {
    /// Signer common name (`None` = ad-hoc).
    pub signer: Option<String>,
    /// Team id in the code directory.
    pub team_id: Option<String>,
    /// The code directory's identifier.
    pub identifier: String,
    /// Code directory flags (0 for a Developer ID kext; never RUNTIME).
    pub flags: u32,
    /// Slices signed.
    pub slices: usize,
}

/// Signs the bundle `src` into `dst` (which must not exist). `identity: None`
/// signs ad-hoc.
pub fn sign_kext(
    src: &Path,
    dst: &Path,
    identity: Option<&Identity>,
    timestamp_url: Option<&str>,
) -> Result<(), SignError> {
    let sign_err = |message: String| SignError::Sign {
        path: src.to_path_buf(),
        message,
    };
    let mut settings = SigningSettings::default();
    if let Some(id) = identity {
        settings.set_signing_key(&id.key, id.cert.clone());
        for c in &id.chain {
            settings.chain_certificate(c.clone());
        }
        // apple-codesign records the team id only for Apple-issued certificates
        // (as codesign does); record the certificate's OU for any certificate
        // that has one, so self-signed test identities behave like real ones.
        if settings.set_team_id_from_signing_certificate().is_none()
            && let Some(team) = id.team_id()
        {
            settings.set_team_id(team);
        }
        if let Some(url) = timestamp_url {
            settings
                .set_time_stamp_url(url)
                .map_err(|e| sign_err(format!("bad time-stamp URL {url}: {e}")))?;
        }
    }
    // No hardened runtime for kexts; no other flags either.
    settings.set_code_signature_flags(SettingsScope::Main, CodeSignatureFlags::empty());
    UnifiedSigner::new(settings)
        .sign_path(src, dst)
        .map_err(|e| sign_err(e.to_string()))
}

/// Verifies a signed kext bundle: `_CodeSignature/CodeResources` is there, the
/// executable's code directory digests and CMS signature verify (apple-codesign's
/// verifier: digests and CMS only, not Apple's trust policy), no RUNTIME flag.
pub fn verify_kext(bundle: &Path) -> Result<KextSignature, SignError> {
    let verr = |message: String| SignError::Verify {
        path: bundle.to_path_buf(),
        message,
    };
    let resources = bundle.join("Contents/_CodeSignature/CodeResources");
    if !resources.is_file() {
        return Err(verr("no Contents/_CodeSignature/CodeResources".into()));
    }
    let plist = plist::Value::from_file(bundle.join("Contents/Info.plist"))
        .map_err(|e| verr(format!("Info.plist: {e}")))?;
    let exe = plist
        .as_dictionary()
        .and_then(|d| d.get("CFBundleExecutable"))
        .and_then(|v| v.as_string())
        .ok_or_else(|| verr("Info.plist has no CFBundleExecutable".into()))?;
    let exe_path = bundle.join("Contents/MacOS").join(exe);
    let data = read(&exe_path)?;
    verify_macho(bundle, &data, Runtime::Forbidden)
}

/// Whether a signature must, or must not, carry the hardened-runtime flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    /// Kexts: never.
    Forbidden,
    /// Executables signed with an identity: always (ad-hoc: either).
    RequiredWhenSigned,
}

/// Signs the Mach-O executable `src` (thin or universal) into `dst`, with
/// `identifier` in its code directory. `identity: None` signs ad-hoc (arm64
/// macOS kills unsigned code); with an identity, the hardened runtime and
/// `timestamp_url`'s secure timestamp, which notarization requires of
/// executables.
pub fn sign_executable(
    src: &Path,
    dst: &Path,
    identifier: &str,
    identity: Option<&Identity>,
    timestamp_url: Option<&str>,
) -> Result<(), SignError> {
    let sign_err = |message: String| SignError::Sign {
        path: src.to_path_buf(),
        message,
    };
    let mut settings = SigningSettings::default();
    settings.set_binary_identifier(SettingsScope::Main, identifier);
    let flags = if let Some(id) = identity {
        settings.set_signing_key(&id.key, id.cert.clone());
        for c in &id.chain {
            settings.chain_certificate(c.clone());
        }
        if settings.set_team_id_from_signing_certificate().is_none()
            && let Some(team) = id.team_id()
        {
            settings.set_team_id(team);
        }
        if let Some(url) = timestamp_url {
            settings
                .set_time_stamp_url(url)
                .map_err(|e| sign_err(format!("bad time-stamp URL {url}: {e}")))?;
        }
        CodeSignatureFlags::RUNTIME
    } else {
        CodeSignatureFlags::empty()
    };
    settings.set_code_signature_flags(SettingsScope::Main, flags);
    UnifiedSigner::new(settings)
        .sign_path(src, dst)
        .map_err(|e| sign_err(e.to_string()))
}

/// Verifies a signed executable (digests and CMS signature of every slice,
/// with apple-codesign's verifier); a Developer ID signature must have the
/// hardened-runtime flag.
pub fn verify_executable(path: &Path) -> Result<KextSignature, SignError> {
    let data = read(path)?;
    verify_macho(path, &data, Runtime::RequiredWhenSigned)
}

fn verify_macho(path: &Path, data: &[u8], runtime: Runtime) -> Result<KextSignature, SignError> {
    let verr = |message: String| SignError::Verify {
        path: path.to_path_buf(),
        message,
    };
    let data = data.to_vec();
    let mach = MachFile::parse(&data).map_err(|e| verr(e.to_string()))?;
    // Ad-hoc signatures carry an empty CMS blob, which the verifier reports as
    // a CMS problem; for them only the digests are checked.
    let mut ad_hoc = true;
    for macho in mach.iter_macho() {
        if let Some(sig) = macho.code_signature().map_err(|e| verr(e.to_string()))?
            && sig
                .signature_data()
                .map_err(|e| verr(e.to_string()))?
                .is_some_and(|d| !d.is_empty())
        {
            ad_hoc = false;
        }
    }
    let problems: Vec<String> = apple_codesign::verify_macho_data(&data)
        .into_iter()
        .filter(|p| {
            !(ad_hoc
                && matches!(
                    p.problem,
                    apple_codesign::VerificationProblemType::CmsError(_)
                        | apple_codesign::VerificationProblemType::NoCryptographicSignature
                ))
        })
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        return Err(verr(problems.join("; ")));
    }
    let mut out = None;
    for macho in mach.iter_macho() {
        let sig = macho
            .code_signature()
            .map_err(|e| verr(e.to_string()))?
            .ok_or_else(|| verr("a slice has no code signature".into()))?;
        let cd = sig
            .code_directory()
            .map_err(|e| verr(e.to_string()))?
            .ok_or_else(|| verr("no code directory".into()))?;
        let has_runtime = cd.flags.contains(CodeSignatureFlags::RUNTIME);
        if runtime == Runtime::Forbidden && has_runtime {
            return Err(verr(
                "the hardened-runtime flag is set; kexts must not use it".into(),
            ));
        }
        // Ad-hoc: the CMS blob is absent or empty.
        let has_cms = sig
            .signature_data()
            .map_err(|e| verr(e.to_string()))?
            .is_some_and(|d| !d.is_empty());
        let signer = if has_cms {
            sig.signed_data()
                .map_err(|e| verr(e.to_string()))?
                // apple-codesign embeds the signing certificate first.
                .and_then(|sd| {
                    sd.certificates()
                        .next()
                        .and_then(|c| c.subject_common_name())
                })
        } else {
            None
        };
        if runtime == Runtime::RequiredWhenSigned && has_cms && !has_runtime {
            return Err(verr(
                "signed with an identity but without the hardened runtime, which notarization requires".into(),
            ));
        }
        let this = KextSignature {
            signer,
            team_id: cd.team_name.as_ref().map(|t| t.to_string()),
            identifier: cd.ident.to_string(),
            flags: cd.flags.bits(),
            slices: 0,
        };
        let entry = out.get_or_insert(this);
        entry.slices += 1;
    }
    out.ok_or_else(|| verr("no Mach-O slice".into()))
}
