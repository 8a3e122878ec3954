//! The unsigned installer, read back with independent tools: bsdtar
//! (libarchive), 7-Zip, GNU cpio, and a BOM reader written here (not the
//! writer's code, not `packaging::bom::read`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use packaging::pkg::{self, KextInput, PkgSpec};
use support::{make_bundle, run};

fn spec(dir: &Path, epoch: i64) -> PkgSpec {
    let a = make_bundle(dir, "PrxSocketFilter", "net.prx.kext.SocketFilter", "0.1.0");
    let b = make_bundle(dir, "PrxIPFilter", "net.prx.kext.IPFilter", "0.1.0");
    PkgSpec {
        identifier: "net.prx.kext.pkg".into(),
        version: "0.1.0".into(),
        title: "prx test".into(),
        min_os: "10.13".into(),
        host_architectures: "x86_64,arm64".into(),
        require_restart: true,
        epoch,
        kexts: vec![
            KextInput {
                bundle: a,
                bundle_identifier: "net.prx.kext.SocketFilter".into(),
                version: "0.1.0".into(),
            },
            KextInput {
                bundle: b,
                bundle_identifier: "net.prx.kext.IPFilter".into(),
                version: "0.1.0".into(),
            },
        ],
        tools: vec![pkg::system::ToolInput {
            path: tool(dir, "prxctl"),
            name: "prxctl".into(),
        }],
        example_config: b"# example configuration\n".to_vec(),
    }
}

/// A stand-in executable (the packaging code does not look inside it).
fn tool(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, b"\xcf\xfa\xed\xfe stand-in executable").unwrap();
    path
}

fn write_pkg(dir: &Path) -> PathBuf {
    let bytes = pkg::build_unsigned(&spec(&dir.join("in"), 1_767_225_600)).unwrap();
    let path = dir.join("prx.pkg");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bsdtar_lists_distribution_and_the_component() {
    let d = tempfile::tempdir().unwrap();
    let pkg = write_pkg(d.path());
    let (ok, out) = run("bsdtar", &["-tvf", pkg.to_str().unwrap()], None);
    assert!(ok, "{out}");
    for name in [
        "Distribution",
        "prx.pkg",
        "prx.pkg/Bom",
        "prx.pkg/Payload",
        "prx.pkg/Scripts",
        "prx.pkg/PackageInfo",
    ] {
        assert!(
            out.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "{name} missing in:\n{out}"
        );
    }
    assert!(out.contains("root") && out.contains("wheel"), "{out}");
}

#[test]
fn seven_zip_tests_the_archive_without_errors() {
    let d = tempfile::tempdir().unwrap();
    let pkg = write_pkg(d.path());
    let (ok, out) = run("7zz", &["t", pkg.to_str().unwrap()], None);
    assert!(ok, "{out}");
    assert!(out.contains("Everything is Ok"), "{out}");
    // A flipped byte in the heap is caught by 7-Zip's checksum check.
    let mut bytes = std::fs::read(&pkg).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xFF;
    let bad = d.path().join("bad.pkg");
    std::fs::write(&bad, bytes).unwrap();
    let (ok, out) = run("7zz", &["t", bad.to_str().unwrap()], None);
    assert!(!ok, "7zz accepted a corrupted pkg:\n{out}");
}

/// (path, mode, uid, gid, size) from `cpio -itv`-independent listing: GNU cpio
/// extracting with --no-preserve-owner would lose owners, so owners come from
/// bsdtar's numeric listing and modes from both.
fn payload_listing(dir: &Path, pkg: &Path) -> Vec<(String, String, String, String)> {
    let (ok, out) = run(
        "bsdtar",
        &["-xf", pkg.to_str().unwrap(), "-C", dir.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
    let payload = dir.join("prx.pkg/Payload");
    let (ok, out) = run(
        "bsdtar",
        &["-tvnf", payload.to_str().unwrap(), "--numeric-owner"],
        None,
    );
    assert!(ok, "{out}");
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                // The name is everything after the date (it may hold spaces).
                f[8..].join(" "),
                f[0].to_string(),
                f[2].to_string(),
                f[3].to_string(),
            )
        })
        .collect()
}

#[test]
fn payload_has_the_kext_tree_as_root_wheel_with_the_right_modes() {
    let d = tempfile::tempdir().unwrap();
    let pkg = write_pkg(d.path());
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let listing = payload_listing(&x, &pkg);
    let paths: Vec<&str> = listing.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".",
            "./Library",
            "./Library/Application Support",
            "./Library/Application Support/prx",
            "./Library/Application Support/prx/prx.toml.example",
            "./Library/Extensions",
            "./Library/Extensions/PrxIPFilter.kext",
            "./Library/Extensions/PrxIPFilter.kext/Contents",
            "./Library/Extensions/PrxIPFilter.kext/Contents/Info.plist",
            "./Library/Extensions/PrxIPFilter.kext/Contents/MacOS",
            "./Library/Extensions/PrxIPFilter.kext/Contents/MacOS/PrxIPFilter",
            "./Library/Extensions/PrxSocketFilter.kext",
            "./Library/Extensions/PrxSocketFilter.kext/Contents",
            "./Library/Extensions/PrxSocketFilter.kext/Contents/Info.plist",
            "./Library/Extensions/PrxSocketFilter.kext/Contents/MacOS",
            "./Library/Extensions/PrxSocketFilter.kext/Contents/MacOS/PrxSocketFilter",
            "./Library/LaunchDaemons",
            "./Library/LaunchDaemons/net.prx.apply.plist",
            "./usr",
            "./usr/local",
            "./usr/local/bin",
            "./usr/local/bin/prxctl",
            "./usr/local/share",
            "./usr/local/share/prx",
            "./usr/local/share/prx/uninstall.sh",
        ]
    );
    let files = [
        "prx.toml.example",
        "Info.plist",
        "PrxIPFilter",
        "PrxSocketFilter",
        "net.prx.apply.plist",
        "prxctl",
        "uninstall.sh",
    ];
    let dirs: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| !files.iter().any(|f| p.ends_with(&format!("/{f}"))))
        .collect();
    for (path, mode, uid, gid) in &listing {
        assert_eq!((uid.as_str(), gid.as_str()), ("0", "0"), "{path}");
        let want = if dirs.contains(&path.as_str()) {
            "drwxr-xr-x"
        } else if path.contains("/MacOS/")
            || path.starts_with("./usr/local/bin/")
            || path.ends_with("uninstall.sh")
        {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{path}");
    }
    // GNU cpio reads the same odc archive and agrees.
    let raw = x.join("payload.cpio");
    let (ok, out) = run(
        "sh",
        &[
            "-c",
            &format!(
                "gzip -dc {} > {}",
                x.join("prx.pkg/Payload").display(),
                raw.display()
            ),
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        "cpio",
        &["-itv", "--numeric-uid-gid", "-F", raw.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
    let cpio_paths: Vec<String> = out
        .lines()
        .filter(|l| !l.contains("block"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[8..].join(" ")
        })
        .collect();
    assert_eq!(cpio_paths, paths, "{out}");
    for l in out.lines().filter(|l| !l.contains("block")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("0", "0"), "{l}");
    }
    // Extracting with cpio gives the modes on disk.
    let ex = x.join("cpio-out");
    std::fs::create_dir(&ex).unwrap();
    let (ok, out) = run(
        "cpio",
        &["-id", "--quiet", "-F", raw.to_str().unwrap()],
        Some(&ex),
    );
    assert!(ok, "{out}");
    use std::os::unix::fs::PermissionsExt;
    let m = |p: &str| std::fs::metadata(ex.join(p)).unwrap().permissions().mode() & 0o7777;
    let k = "Library/Extensions/PrxSocketFilter.kext/Contents";
    assert_eq!(m(&format!("{k}/MacOS/PrxSocketFilter")), 0o755);
    assert_eq!(m(&format!("{k}/Info.plist")), 0o644);
    assert_eq!(m(k), 0o755);
    assert_eq!(m("usr/local/bin/prxctl"), 0o755);
    assert_eq!(m("usr/local/share/prx/uninstall.sh"), 0o755);
    assert_eq!(m("Library/LaunchDaemons/net.prx.apply.plist"), 0o644);
    assert_eq!(m("Library/Application Support/prx/prx.toml.example"), 0o644);
}

/// An independent BOM reader: the block table and vars, then the Paths B-tree
/// walked from its root (branches followed down, every leaf read).
fn read_bom(bom: &[u8]) -> BTreeMap<String, (u16, u32, u32, u32)> {
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let be16 = |b: &[u8], o: usize| u16::from_be_bytes(b[o..o + 2].try_into().unwrap());
    assert_eq!(&bom[..8], b"BOMStore");
    assert_eq!(be32(bom, 8), 1, "version");
    let (index_off, vars_off) = (be32(bom, 16) as usize, be32(bom, 24) as usize);
    let nblocks = be32(bom, index_off) as usize;
    let blocks: Vec<&[u8]> = (0..nblocks)
        .map(|i| {
            let a = be32(bom, index_off + 4 + 8 * i) as usize;
            let l = be32(bom, index_off + 8 + 8 * i) as usize;
            &bom[a..a + l]
        })
        .collect();
    let mut vars = BTreeMap::new();
    let mut at = vars_off + 4;
    for _ in 0..be32(bom, vars_off) {
        let idx = be32(bom, at) as usize;
        let n = bom[at + 4] as usize;
        vars.insert(
            String::from_utf8(bom[at + 5..at + 5 + n].to_vec()).unwrap(),
            idx,
        );
        at += 5 + n;
    }
    for v in ["BomInfo", "Paths", "HLIndex", "VIndex", "Size64"] {
        assert!(vars.contains_key(v), "var {v}");
    }
    let tree = blocks[vars["Paths"]];
    assert_eq!(&tree[..4], b"tree");
    let count = be32(tree, 16) as usize;
    /// (id, parent id, name, (mode, uid, gid, size))
    type Raw = (u32, u32, String, (u16, u32, u32, u32));
    let mut raw: Vec<Raw> = Vec::new();
    fn walk(blocks: &[&[u8]], id: usize, out: &mut Vec<usize>) {
        let node = blocks[id];
        let leaf = u16::from_be_bytes([node[0], node[1]]) == 1;
        let n = u16::from_be_bytes([node[2], node[3]]) as usize;
        if leaf {
            out.push(id);
        } else {
            for k in 0..n {
                let child =
                    u32::from_be_bytes(node[12 + 8 * k..16 + 8 * k].try_into().unwrap()) as usize;
                walk(blocks, child, out);
            }
        }
    }
    let mut leaves = Vec::new();
    walk(&blocks, be32(tree, 8) as usize, &mut leaves);
    for leaf in leaves {
        let node = blocks[leaf];
        for k in 0..be16(node, 2) as usize {
            let info1 = blocks[be32(node, 12 + 8 * k) as usize];
            let file = blocks[be32(node, 16 + 8 * k) as usize];
            let info2 = blocks[be32(info1, 4) as usize];
            let name =
                String::from_utf8(file[4..file.iter().rposition(|&c| c == 0).unwrap()].to_vec())
                    .unwrap();
            raw.push((
                be32(info1, 0),
                be32(file, 0),
                name,
                (
                    be16(info2, 4),
                    be32(info2, 6),
                    be32(info2, 10),
                    be32(info2, 18),
                ),
            ));
        }
    }
    assert_eq!(raw.len(), count, "pathCount");
    let by_id: BTreeMap<u32, (u32, String)> =
        raw.iter().map(|r| (r.0, (r.1, r.2.clone()))).collect();
    let full = |mut id: u32| {
        let mut parts = Vec::new();
        while id != 0 {
            let (p, n) = &by_id[&id];
            parts.push(n.clone());
            id = *p;
        }
        parts.reverse();
        parts.join("/")
    };
    raw.iter().map(|r| (full(r.0), r.3)).collect()
}

#[test]
fn bom_lists_exactly_the_payload() {
    let d = tempfile::tempdir().unwrap();
    let pkg = write_pkg(d.path());
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let listing = payload_listing(&x, &pkg);
    let bom = read_bom(&std::fs::read(x.join("prx.pkg/Bom")).unwrap());
    let payload_paths: Vec<&String> = listing.iter().map(|e| &e.0).collect();
    let bom_paths: Vec<&String> = bom.keys().collect();
    let mut sorted = payload_paths.clone();
    sorted.sort();
    assert_eq!(bom_paths, sorted);
    for (path, mode, _, _) in &listing {
        let (bmode, uid, gid, size) = bom[path];
        assert_eq!((uid, gid), (0, 0), "{path}");
        let want: u16 = match mode.as_str() {
            "drwxr-xr-x" => 0o040755,
            "-rwxr-xr-x" => 0o100755,
            "-rw-r--r--" => 0o100644,
            other => panic!("{other}"),
        };
        assert_eq!(bmode, want, "{path}");
        if want & 0o170000 == 0o100000 {
            assert!(size > 0, "{path}");
        }
    }
}

#[test]
fn toc_uses_sha1_and_metadata_is_what_installer_reads() {
    let d = tempfile::tempdir().unwrap();
    let pkg = write_pkg(d.path());
    let bytes = std::fs::read(&pkg).unwrap();
    assert_eq!(&bytes[..4], b"xar!");
    assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), 28);
    assert_eq!(
        u32::from_be_bytes(bytes[24..28].try_into().unwrap()),
        1,
        "sha1"
    );
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let (ok, out) = run(
        "bsdtar",
        &["-xf", pkg.to_str().unwrap(), "-C", x.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
    let dist = std::fs::read_to_string(x.join("Distribution")).unwrap();
    for needle in [
        "<title>prx test</title>",
        "hostArchitectures=\"x86_64,arm64\"",
        "rootVolumeOnly=\"true\"",
        "<os-version min=\"10.13\"/>",
        "onConclusion=\"RequireRestart\"",
        "#prx.pkg</pkg-ref>",
        "<welcome file=\"welcome.html\" mime-type=\"text/html\"/>",
        "<conclusion file=\"conclusion.html\" mime-type=\"text/html\"/>",
    ] {
        assert!(dist.contains(needle), "{needle} in {dist}");
    }
    let info = std::fs::read_to_string(x.join("prx.pkg/PackageInfo")).unwrap();
    for needle in [
        "install-location=\"/\"",
        "overwrite-permissions=\"false\"",
        "auth=\"root\"",
        "format-version=\"2\"",
        "numberOfFiles=\"25\"",
        "<preinstall file=\"./preinstall\"/>",
        "<postinstall file=\"./postinstall\"/>",
        "path=\"./Library/Extensions/PrxSocketFilter.kext\"",
    ] {
        assert!(info.contains(needle), "{needle} in {info}");
    }
    let (ok, out) = run(
        "bsdtar",
        &[
            "-tvnf",
            x.join("prx.pkg/Scripts").to_str().unwrap(),
            "--numeric-owner",
        ],
        None,
    );
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./postinstall")),
        "{out}"
    );
    for name in [
        "Resources/en.lproj/welcome.html",
        "Resources/en.lproj/conclusion.html",
    ] {
        let page = std::fs::read_to_string(x.join(name)).unwrap();
        assert!(
            page.contains("Reduced Security") || page.contains("uninstall.sh"),
            "{name}"
        );
    }
    // The scripts themselves are checked (sh -n, shellcheck, runs against a
    // fake root) in tests/scripts.rs.
}

#[test]
fn two_unsigned_packages_of_the_same_input_are_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let s1 = spec(&d.path().join("one"), 1_767_225_600);
    // Different source mtimes and directory: same package.
    let s2 = spec(&d.path().join("two"), 1_767_225_600);
    let a = pkg::build_unsigned(&s1).unwrap();
    let b = pkg::build_unsigned(&s2).unwrap();
    assert!(a == b, "unsigned packages differ");
    let c = pkg::build_unsigned(&spec(&d.path().join("three"), 1_767_225_601)).unwrap();
    assert!(a != c, "SOURCE_DATE_EPOCH is not used");
}

#[test]
fn install_check_reports_root_wheel_under_library_extensions() {
    let d = tempfile::tempdir().unwrap();
    let pkg = write_pkg(d.path());
    let staging = d.path().join("root");
    let report = pkg::check::check(&pkg, &staging).unwrap();
    assert!(report.xar.toc_checksum && !report.xar.rsa_signature && !report.xar.cms_signature);
    let c = &report.components[0];
    assert_eq!(c.install_location, "/");
    assert_eq!(
        c.scripts,
        [
            ("postinstall".to_string(), 0o100755),
            ("preinstall".to_string(), 0o100755)
        ]
    );
    assert!(c.installed.iter().all(|i| i.uid == 0 && i.gid == 0));
    assert!(c.installed.iter().any(|i| i.path
        == "/Library/Extensions/PrxIPFilter.kext/Contents/MacOS/PrxIPFilter"
        && i.mode == 0o100755));
    assert!(
        staging
            .join("Library/Extensions/PrxSocketFilter.kext/Contents/Info.plist")
            .is_file()
    );
    let text = report.to_string();
    assert!(
        text.contains("drwxr-xr-x root:wheel        0 /Library/Extensions/PrxSocketFilter.kext\n"),
        "{text}"
    );
}
