//! kextld's arm64e backend on real rustc output: the kexts' staticlibs, built
//! for the arm64e kernel target by the same code `cargo xtask build` runs,
//! link reproducibly into kexts that llvm-otool reads and that the
//! independent decoder (`prx_tests::arm64e`) finds well-formed: every rebase
//! lands on a defined symbol or section, every bind names a KPI-exported
//! symbol, kmod_info start/stop are auth rebases (key IA, 0xE4FE), and
//! split-seg info covers every adrp and stub call.

use std::collections::BTreeSet;

use kextld::kpi::{KpiTables, Lookup};
use kextld::link::{LinkOptions, link};
use kextld::{Arch, MinOs};
use prx_tests::arm64e::{FixupKind, MachO};
use prx_tests::{root, tool};

fn staticlibs() -> std::collections::BTreeMap<String, std::path::PathBuf> {
    let root = root();
    xtask::build::build_staticlibs(
        &root,
        &root.join("target"),
        Arch::Arm64e,
        MinOs::ARM64E_DEFAULT,
        true,
        &["kext-socket", "kext-ip"],
    )
    .expect("arm64e kernel build of the kext crates")
}

fn link_lib(lib: &std::path::Path, min_os: MinOs) -> kextld::link::Linked {
    link(&LinkOptions {
        arch: Arch::Arm64e,
        min_os,
        inputs: vec![lib.to_path_buf()],
        source_version: 0,
    })
    .expect("links")
}

#[test]
fn rust_kexts_link_for_arm64e_and_the_independent_decoder_agrees() {
    for (name, lib) in staticlibs() {
        for min_os in [
            MinOs::ARM64E_DEFAULT,
            MinOs {
                major: 12,
                minor: 0,
            },
        ] {
            let a = link_lib(&lib, min_os);
            let b = link_lib(&lib, min_os);
            assert!(a.bytes == b.bytes, "{name}: two links differ");
            assert!(
                a.undefined.iter().any(|u| u == "_printf"),
                "{name}: {:?}",
                a.undefined
            );
            for u in &a.undefined {
                assert!(
                    matches!(
                        KpiTables::builtin().lookup(Arch::Arm64e, u),
                        Lookup::Public(_)
                    ),
                    "{name}: {u} is KPI-exported"
                );
            }
            assert_eq!(a.defined_exports, ["_kmod_info"], "{name}");
            eprintln!(
                "{name} (macOS {min_os}): arm64e slice {} bytes",
                a.bytes.len()
            );

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(&name);
            std::fs::write(&path, &a.bytes).unwrap();
            let path = path.to_str().unwrap();
            let otool = tool("llvm-otool-19", &["-hlv", path]);
            assert!(
                otool.contains("ARM64          E  0xc0  KEXTBUNDLE"),
                "{otool}"
            );

            let m = MachO::parse(&a.bytes).expect("decoder parses");
            assert_eq!(m.cpusubtype, 0xC000_0002);
            let segs: Vec<&str> = m.segments.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(
                segs,
                [
                    "__TEXT",
                    "__TEXT_EXEC",
                    "__DATA",
                    "__DATA_CONST",
                    "__LINKEDIT"
                ]
            );
            let fx = m
                .chained_fixups()
                .expect("chained fixups decode")
                .expect("present");
            let syms = tool("llvm-nm-19", &["-m", path]);
            let addr_of = |sym: &str| {
                syms.lines()
                    .find(|l| l.ends_with(&format!(" {sym}")))
                    .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
                    .unwrap_or_else(|| panic!("{sym} in llvm-nm output"))
            };
            let defined: BTreeSet<u64> = syms
                .lines()
                .filter(|l| !l.contains("(undefined)"))
                .filter_map(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
                .collect();
            let kmod = addr_of("_kmod_info");
            let mut kmod_slots = 0;
            for f in &fx.fixups {
                let seg = m.segment_at(f.vmaddr, 8).expect("fixup in a segment");
                assert!(
                    seg.initprot & 2 != 0 && f.vmaddr % 4 == 0,
                    "{name}: fixup {f:?}"
                );
                match &f.kind {
                    FixupKind::Rebase { target, .. } | FixupKind::AuthRebase { target, .. } => {
                        assert!(
                            defined.contains(target)
                                || m.sections
                                    .iter()
                                    .any(|s| s.addr <= *target && *target <= s.addr + s.size),
                            "{name}: rebase target {target:#x} is a symbol or inside a section"
                        );
                    }
                    FixupKind::Bind { name: sym, .. } | FixupKind::AuthBind { name: sym, .. } => {
                        assert!(
                            matches!(
                                KpiTables::builtin().lookup(Arch::Arm64e, sym),
                                Lookup::Public(_)
                            ),
                            "{name}: bind {sym} is KPI-exported"
                        );
                    }
                }
                if f.vmaddr == kmod + 180 || f.vmaddr == kmod + 188 {
                    kmod_slots += 1;
                    let FixupKind::AuthRebase {
                        target,
                        key,
                        addr_div,
                        diversity,
                    } = f.kind
                    else {
                        panic!("{name}: kmod_info start/stop must be auth rebases: {f:?}");
                    };
                    assert_eq!((key, addr_div, diversity), (0, false, 0xE4FE), "{name}");
                    assert!(
                        defined.contains(&target),
                        "{name}: start/stop is a function symbol"
                    );
                }
            }
            assert_eq!(kmod_slots, 2, "{name}: kmod_info start and stop");
            // Callback slots the kernel calls are signed with their function-type
            // discriminators: both kexts register one kern_control (ctl_connect
            // 0xBCAD, ctl_disconnect 0x392E, ctl_setopt 0x5070, ctl_getopt 0x821F);
            // the IP filter also two ipf_filter registrations (IPv4, IPv6:
            // ipf_input 0x78FF, ipf_output 0xBCAD — the same function type as
            // ctl_connect — and ipf_detach 0x2ABE).
            let signed = |disc: u16| {
                fx.fixups
                    .iter()
                    .filter(|f| matches!(f.kind, FixupKind::AuthRebase { key: 0, addr_div: false, diversity, .. } if diversity == disc))
                    .count()
            };
            for disc in [0x392E, 0x5070, 0x821F] {
                assert_eq!(
                    signed(disc),
                    1,
                    "{name}: kern_control slot with discriminator {disc:#06x}"
                );
            }
            if name.contains("ip") {
                for (disc, n) in [(0x78FF, 2), (0xBCAD, 3), (0x2ABE, 2)] {
                    assert_eq!(
                        signed(disc),
                        n,
                        "{name}: callback slots with discriminator {disc:#06x}"
                    );
                }
            }
            // Split-seg info: every adrp and every bl has a record.
            let split = m
                .split_seg_info()
                .expect("split-seg decodes")
                .expect("present");
            let from = |kind: u8| -> BTreeSet<u64> {
                split
                    .iter()
                    .filter(|r| r.kind == kind)
                    .map(|r| m.split_seg_address(r.from_section, r.from_offset).unwrap())
                    .collect()
            };
            let (adrps, br26s) = (from(5), from(7));
            let dis = tool("llvm-objdump-19", &["--macho", "-d", path]);
            let mut seen = 0;
            for l in dis.lines() {
                let Some((addr, rest)) = l.trim_start().split_once(":\t") else {
                    continue;
                };
                let Ok(addr) = u64::from_str_radix(addr, 16) else {
                    continue;
                };
                if rest.contains("\tadrp\t") {
                    assert!(adrps.contains(&addr), "{name}: adrp at {addr:#x} covered");
                    seen += 1;
                }
                if rest.contains("symbol stub for") {
                    assert!(br26s.contains(&addr), "{name}: bl at {addr:#x} covered");
                }
            }
            assert!(seen > 0, "{name}: the code has adrp instructions");
        }
    }
}
