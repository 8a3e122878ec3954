//! `cargo xtask package --check` reads packages it did not build: hostile
//! archives must give an error — never a write outside the staging root, an
//! abort on a huge declared length, or an unbounded decompression.

mod support;

use std::io::Write;
use std::path::Path;

use packaging::pkg::{self, KextInput, PkgSpec};
use packaging::xar::{self, Encoding, Member};
use support::make_bundle;

fn spec(dir: &Path) -> PkgSpec {
    let a = make_bundle(dir, "PrxIPFilter", "net.prx.kext.IPFilter", "0.1.0");
    PkgSpec {
        identifier: "net.prx.kext.pkg".into(),
        version: "0.1.0".into(),
        title: "prx test".into(),
        min_os: "10.13".into(),
        host_architectures: "x86_64,arm64".into(),
        require_restart: true,
        epoch: 1_767_225_600,
        kexts: vec![KextInput {
            bundle: a,
            bundle_identifier: "net.prx.kext.IPFilter".into(),
            version: "0.1.0".into(),
        }],
        tools: Vec::new(),
        example_config: b"# example\n".to_vec(),
    }
}

/// A valid package's members, with `edit` applied, written again as a XAR
/// (so every checksum is right: only the content is hostile).
fn rebuilt(dir: &Path, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let bytes = pkg::build_unsigned(&spec(&dir.join("in"))).unwrap();
    let members: Vec<Member> = xar::read_all(&bytes)
        .unwrap()
        .into_iter()
        .map(|m| Member {
            data: (!m.is_dir).then(|| {
                let enc = if m.path.ends_with("Payload") || m.path.ends_with("Scripts") {
                    Encoding::Raw
                } else {
                    Encoding::Zlib
                };
                (edit(&m.path, m.data), enc)
            }),
            perm: if m.is_dir { 0o755 } else { 0o644 },
            path: m.path,
        })
        .collect();
    xar::write(&members, 1_767_225_600).unwrap()
}

fn check(dir: &Path, bytes: &[u8]) -> Result<pkg::check::CheckReport, String> {
    let p = dir.join("hostile.pkg");
    std::fs::write(&p, bytes).unwrap();
    pkg::check::check(&p, &dir.join("a/b/staging")).map_err(|e| e.to_string())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn an_install_location_climbing_out_of_the_root_writes_nothing_outside_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bytes = rebuilt(dir, |path, data| {
        if path.ends_with("PackageInfo") {
            String::from_utf8(data)
                .unwrap()
                .replace("install-location=\"/\"", "install-location=\"/../../..\"")
                .into_bytes()
        } else {
            data
        }
    });
    std::fs::create_dir_all(dir.join("a/b/staging")).unwrap();
    std::fs::write(dir.join("hostile.pkg"), &bytes).unwrap();
    let before = listing(dir);
    let e = check(dir, &bytes).unwrap_err();
    assert!(e.contains("install-location \"/../../..\""), "{e}");
    assert!(e.contains("climbs out"), "{e}");
    assert_eq!(listing(dir), before, "nothing was written anywhere");
}

#[test]
fn huge_or_inconsistent_xar_lengths_are_errors_not_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = pkg::build_unsigned(&spec(&dir.join("in"))).unwrap();
    assert!(check(dir, &good).is_ok());
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    for (what, bytes, want) in [
        // The case: "memory allocation of 4611686018427387904 bytes failed".
        (
            "uncompressed TOC length 2^62",
            patch(16, &(1u64 << 62).to_be_bytes()),
            "uncompressed",
        ),
        (
            "compressed TOC length past the end",
            patch(8, &(u64::MAX - 3).to_be_bytes()),
            "runs past the end",
        ),
        (
            "header size 0",
            patch(4, &0u16.to_be_bytes()),
            "header size 0",
        ),
        (
            "header size 65535",
            patch(4, &u16::MAX.to_be_bytes()),
            "header size",
        ),
        (
            "a TOC that expands beyond its declared length",
            patch(16, &10u64.to_be_bytes()),
            "expands beyond 10 bytes",
        ),
        ("not a XAR", b"xar".to_vec(), "not a .pkg"),
    ] {
        let e = check(dir, &bytes).unwrap_err();
        assert!(e.contains(want), "{what}: {e}");
    }
}

#[test]
fn a_gzip_bomb_payload_is_refused_at_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 100 MiB of zeros in ~100 KB of gzip: more than the 64 MiB bound.
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        z.write_all(&zeros).unwrap();
    }
    let bomb = z.finish().unwrap();
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    let bytes = rebuilt(dir, |path, data| {
        if path.ends_with("Payload") {
            bomb.clone()
        } else {
            data
        }
    });
    let e = check(dir, &bytes).unwrap_err();
    assert!(e.contains("Payload: expands beyond 67108864 bytes"), "{e}");
    // The bound is a parameter of the reader.
    let e = pkg::check::read_cpio_gz_limited(&bomb, "x", 1000).unwrap_err();
    assert!(e.to_string().contains("expands beyond 1000 bytes"), "{e}");
}
