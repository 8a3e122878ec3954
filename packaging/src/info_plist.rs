//! `Contents/Info.plist` of a kext bundle.
//!
//! The keys are those shipped third-party kexts carry (see kext-format.md, "Info.plist
//! as shipped kexts have it"), in sorted order as Xcode writes them, as an XML
//! property list with tab indentation:
//!
//! | key | value |
//! |---|---|
//! | CFBundleDevelopmentRegion | `"en"` |
//! | CFBundleExecutable | `executable` from `[package.metadata.kext]` |
//! | CFBundleIdentifier | `bundle-identifier` |
//! | CFBundleInfoDictionaryVersion | `"6.0"` |
//! | CFBundleName | `display-name` |
//! | CFBundlePackageType | `"KEXT"` |
//! | CFBundleShortVersionString, CFBundleVersion | the crate version |
//! | CFBundleSignature | `"????"` |
//! | CFBundleSupportedPlatforms | `["MacOSX"]` |
//! | LSMinimumSystemVersion | the minimum macOS, e.g. `"10.13"` |
//! | NSHumanReadableCopyright | `copyright` |
//! | OSBundleLibraries | KPI bundle id → version, from `kextld::kpi::os_bundle_libraries` |
//!
//! CFBundleDevelopmentRegion is `"en"`: Xcode's templates write
//! `$(DEVELOPMENT_LANGUAGE)`, which expands to `en` in current Xcode (older kext
//! templates had `English`; both are accepted). `OSBundleRequired` is omitted: the
//! prx kexts are not needed at early boot, and declaring it would put them into
//! the boot/recovery paths. `OSBundleCompatibleVersion` is omitted too: no other
//! kext links against ours.

use std::collections::BTreeMap;

use kext_metadata::{KextMetadata, MinOs};
use plist::{Dictionary, Value};

/// The value of CFBundleDevelopmentRegion.
pub const DEVELOPMENT_REGION: &str = "en";

/// Why an Info.plist could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum InfoPlistError {
    /// No KPI library: the kernel refuses a kext with an executable and no dependencies.
    #[error(
        "{crate_name}: OSBundleLibraries would be empty; a kext with an executable must link \
         against at least one KPI set (does its binary have no undefined symbols?)"
    )]
    NoLibraries {
        /// The kext crate.
        crate_name: String,
    },
    /// A value the kext loader cannot parse.
    #[error("{crate_name}: {message}")]
    Invalid {
        /// The kext crate.
        crate_name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The plist serialiser failed.
    #[error("{crate_name}: cannot serialise Info.plist: {source}")]
    Plist {
        /// The kext crate.
        crate_name: String,
        /// The serialiser's error.
        source: plist::Error,
    },
}

/// Builds the Info.plist (XML bytes, ending in a newline) of the kext described by
/// `meta`, declaring `libraries` (KPI bundle id → version) and `min_macos`.
pub fn generate(
    meta: &KextMetadata,
    libraries: &BTreeMap<String, String>,
    min_macos: MinOs,
) -> Result<Vec<u8>, InfoPlistError> {
    let invalid = |message: String| InfoPlistError::Invalid {
        crate_name: meta.crate_name.clone(),
        message,
    };
    if libraries.is_empty() {
        return Err(InfoPlistError::NoLibraries {
            crate_name: meta.crate_name.clone(),
        });
    }
    check_kext_version(&meta.version).map_err(|m| {
        invalid(format!(
            "version {:?} in {} cannot be a CFBundleVersion: {m}",
            meta.version,
            meta.manifest.display()
        ))
    })?;
    for (id, version) in libraries {
        check_kext_version(version)
            .map_err(|m| invalid(format!("OSBundleLibraries: {id} = {version:?}: {m}")))?;
    }

    let string = |s: &str| Value::String(s.to_owned());
    let libs: Dictionary = libraries
        .iter()
        .map(|(k, v)| (k.clone(), string(v)))
        .collect();
    let mut entries: BTreeMap<&str, Value> = BTreeMap::new();
    entries.insert("CFBundleDevelopmentRegion", string(DEVELOPMENT_REGION));
    entries.insert("CFBundleExecutable", string(&meta.executable));
    entries.insert("CFBundleIdentifier", string(&meta.bundle_identifier));
    entries.insert("CFBundleInfoDictionaryVersion", string("6.0"));
    entries.insert("CFBundleName", string(&meta.display_name));
    entries.insert("CFBundlePackageType", string("KEXT"));
    entries.insert("CFBundleShortVersionString", string(&meta.version));
    entries.insert("CFBundleSignature", string("????"));
    entries.insert(
        "CFBundleSupportedPlatforms",
        Value::Array(vec![string("MacOSX")]),
    );
    entries.insert("CFBundleVersion", string(&meta.version));
    entries.insert("LSMinimumSystemVersion", string(&min_macos.to_string()));
    entries.insert("NSHumanReadableCopyright", string(&meta.copyright));
    entries.insert("OSBundleLibraries", Value::Dictionary(libs));
    // Dictionary keeps insertion order; the BTreeMap makes it sorted.
    let dict: Dictionary = entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();

    let mut out = Vec::new();
    Value::Dictionary(dict)
        .to_writer_xml_with_options(
            &mut out,
            &plist::XmlWriteOptions::default().indent(b'\t', 1),
        )
        .map_err(|source| InfoPlistError::Plist {
            crate_name: meta.crate_name.clone(),
            source,
        })?;
    if out.last() != Some(&b'\n') {
        out.push(b'\n');
    }
    Ok(out)
}

/// Checks that `v` is a version the kext system parses (OSKext's `vers` format
/// restricted to release versions): `MAJOR[.MINOR[.REVISION]]` with MAJOR of 1-4
/// digits and MINOR and REVISION of 1-2 digits.
fn check_kext_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = (1..=3).contains(&parts.len())
        && digits(parts[0], 4)
        && parts[1..].iter().all(|p| digits(p, 2));
    if ok {
        Ok(())
    } else {
        Err("expected MAJOR[.MINOR[.REVISION]] with up to 4, 2 and 2 digits (no pre-release or build \
             suffix; the kernel's version parser rejects them)"
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn meta() -> KextMetadata {
        KextMetadata::parse(
            Path::new("kext-x/Cargo.toml"),
            r#"
[package]
name = "kext-x"
version = "1.2.3"
[package.metadata.kext]
bundle-identifier = "net.prx.kext.X"
display-name = "prx <X> & co"
executable = "PrxX"
copyright = "Copyright © 2026 The prx developers"
"#,
        )
        .unwrap()
    }

    fn libs() -> BTreeMap<String, String> {
        [
            ("com.apple.kpi.libkern", "17.0.0"),
            ("com.apple.kpi.bsd", "17.0.0"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
    }

    #[test]
    fn round_trips_with_expected_keys() {
        let xml = generate(&meta(), &libs(), MinOs::X86_64_DEFAULT).unwrap();
        let v = Value::from_reader(std::io::Cursor::new(&xml)).unwrap();
        let d = v.as_dictionary().unwrap();
        let s = |k: &str| {
            d.get(k)
                .and_then(Value::as_string)
                .unwrap_or_else(|| panic!("{k} missing"))
        };
        assert_eq!(s("CFBundleDevelopmentRegion"), "en");
        assert_eq!(s("CFBundleExecutable"), "PrxX");
        assert_eq!(s("CFBundleIdentifier"), "net.prx.kext.X");
        assert_eq!(s("CFBundleInfoDictionaryVersion"), "6.0");
        assert_eq!(s("CFBundleName"), "prx <X> & co");
        assert_eq!(s("CFBundlePackageType"), "KEXT");
        assert_eq!(s("CFBundleShortVersionString"), "1.2.3");
        assert_eq!(s("CFBundleSignature"), "????");
        assert_eq!(s("CFBundleVersion"), "1.2.3");
        assert_eq!(s("LSMinimumSystemVersion"), "10.13");
        assert_eq!(
            s("NSHumanReadableCopyright"),
            "Copyright © 2026 The prx developers"
        );
        let platforms = d
            .get("CFBundleSupportedPlatforms")
            .and_then(Value::as_array)
            .unwrap();
        assert_eq!(platforms, &vec![Value::String("MacOSX".into())]);
        let l = d
            .get("OSBundleLibraries")
            .and_then(Value::as_dictionary)
            .unwrap();
        let l: Vec<(&str, &str)> = l
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_string().unwrap()))
            .collect();
        assert_eq!(
            l,
            [
                ("com.apple.kpi.bsd", "17.0.0"),
                ("com.apple.kpi.libkern", "17.0.0")
            ]
        );
        // Sorted keys, nothing else.
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 13);
        assert!(!keys.contains(&"OSBundleRequired"));
        // arm64e minimum.
        let xml = generate(&meta(), &libs(), MinOs::ARM64E_DEFAULT).unwrap();
        let v = Value::from_reader(std::io::Cursor::new(&xml)).unwrap();
        assert_eq!(
            v.as_dictionary()
                .unwrap()
                .get("LSMinimumSystemVersion")
                .unwrap()
                .as_string(),
            Some("11.0")
        );
    }

    #[test]
    fn xml_is_well_formed_with_plist_doctype() {
        // Independent of the plist crate's reader: a small tag-balance check.
        let xml =
            String::from_utf8(generate(&meta(), &libs(), MinOs::X86_64_DEFAULT).unwrap()).unwrap();
        let mut lines = xml.lines();
        assert_eq!(
            lines.next(),
            Some(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
        );
        assert_eq!(
            lines.next(),
            Some(
                r#"<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">"#
            )
        );
        assert_eq!(lines.next(), Some(r#"<plist version="1.0">"#));
        assert!(xml.ends_with("</plist>\n"), "{xml}");
        assert!(
            xml.contains("\t<key>CFBundleDevelopmentRegion</key>\n\t<string>en</string>\n"),
            "{xml}"
        );
        // Special characters are escaped, so the only '<' and '&' are markup.
        assert!(
            xml.contains("<string>prx &lt;X&gt; &amp; co</string>"),
            "{xml}"
        );
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = xml.split_once("<plist").unwrap().1;
        rest = &rest[rest.find('>').unwrap() + 1..];
        stack.push("plist");
        while let Some(start) = rest.find('<') {
            let between = &rest[..start];
            assert!(!between.contains('>'), "stray '>' in {between:?}");
            let end = rest[start..].find('>').unwrap() + start;
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "unbalanced </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split(' ').next().unwrap());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert_eq!(rest, "\n");
    }

    #[test]
    fn deterministic() {
        let a = generate(&meta(), &libs(), MinOs::X86_64_DEFAULT).unwrap();
        assert_eq!(
            a,
            generate(&meta(), &libs(), MinOs::X86_64_DEFAULT).unwrap()
        );
    }

    #[test]
    fn rejects_what_the_kernel_would() {
        let e = generate(&meta(), &BTreeMap::new(), MinOs::X86_64_DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kext-x") && e.contains("OSBundleLibraries"),
            "{e}"
        );
        let mut m = meta();
        m.version = "1.2.3-beta.1".into();
        let e = generate(&m, &libs(), MinOs::X86_64_DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1.2.3-beta.1") && e.contains("kext-x/Cargo.toml"),
            "{e}"
        );
        let mut bad = libs();
        bad.insert("com.apple.kpi.mach".into(), "seventeen".into());
        let e = generate(&meta(), &bad, MinOs::X86_64_DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("com.apple.kpi.mach"), "{e}");
        for ok in ["0.1.0", "17.0.0", "9999.99.99", "1", "1.0"] {
            assert!(check_kext_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1.2.3.4", "10000.0.0", "1.100.0", "a.b.c", "1..2"] {
            assert!(check_kext_version(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod real_kext_tests {
    use super::*;
    use kext_metadata::Arch;
    use kextld::kpi::{KpiTables, os_bundle_libraries_multi};
    use std::path::Path;

    /// The real socket-filter crate's metadata, with the KPI libraries its calls
    /// need, through the same path `cargo xtask build` takes.
    #[test]
    fn socket_filter_plist() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kext-socket/Cargo.toml");
        let meta = KextMetadata::load(&manifest).unwrap();
        let undefined: Vec<String> = [
            "_sflt_register",
            "_sflt_unregister",
            "_sock_inject_data_out",
            "_mbuf_pullup",
            "_printf",
            "_OSMalloc",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let libraries = os_bundle_libraries_multi(
            KpiTables::builtin(),
            &[
                (Arch::X86_64, &undefined, meta.min_macos_x86_64),
                (Arch::Arm64e, &undefined, meta.min_macos_arm64e),
            ],
        )
        .unwrap();
        let min = meta.min_macos_x86_64.min(meta.min_macos_arm64e);
        let xml = String::from_utf8(generate(&meta, &libraries, min).unwrap()).unwrap();
        assert!(
            xml.contains(
                "\t<key>OSBundleLibraries</key>\n\t<dict>\n\
                 \t\t<key>com.apple.kpi.bsd</key>\n\t\t<string>17.0.0</string>\n\
                 \t\t<key>com.apple.kpi.libkern</key>\n\t\t<string>17.0.0</string>\n\t</dict>\n"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<string>net.prx.kext.SocketFilter</string>"),
            "{xml}"
        );
        assert!(
            xml.contains("<key>LSMinimumSystemVersion</key>\n\t<string>10.13</string>"),
            "{xml}"
        );
    }
}
