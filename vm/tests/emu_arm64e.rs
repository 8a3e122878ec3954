//! The prx kexts' arm64e slices executed, with pointer authentication: the
//! emulator cross-built for aarch64 runs under `qemu-aarch64 -cpu max` (see
//! `xtask::emu_arm64e`), maps the arm64e slice of the same bundles the x86_64
//! tests use, applies its chained fixups (signing every authenticated one with
//! the process's PAC keys) and calls kmod start/stop and every callback as xnu
//! does — an authenticated branch with the discriminator of the function-pointer
//! type. Each scenario's verdict, steps and kext log (statistics included) must
//! equal the x86_64 run's. Negative controls patch one slot of a copy of the
//! slice, or rebuild the kext with one slot's `sign_slot!` mark left out, and
//! expect a pointer-authentication fault naming the callback.
//! Missing tools (qemu-user, the aarch64 cross gcc and libc, the rustup target)
//! are installed by `xtask::emu_arm64e::ensure_tools`, which says so; if that is
//! impossible the tests fail, never skip.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::{prx_bundles as bundles, root, scratch};

use vm::emu::arch::chained::{self, Target};
use vm::emu::image::{self, CPU_TYPE_ARM64};
use vm::emu::{self, RunOptions, Runner, ScenarioReport};

fn bundle(name: &str) -> PathBuf {
    bundles()
        .iter()
        .find(|p| p.ends_with(format!("{name}.kext")))
        .cloned()
        .unwrap_or_else(|| panic!("no {name}.kext in {:?}", bundles()))
}

fn arm64e() -> &'static Runner {
    static R: OnceLock<Runner> = OnceLock::new();
    R.get_or_init(|| {
        xtask::emu_arm64e::prepare(&root(), "vm arm64e tests")
            .unwrap_or_else(|e| panic!("preparing the aarch64 emulator: {e:#}"))
    })
}

fn x86_64() -> Runner {
    Runner {
        program: PathBuf::from(env!("CARGO_BIN_EXE_prx-emu")),
        args: vec!["child".into()],
    }
}

fn run(runner: &Runner, scenario: &str, kexts: &[PathBuf]) -> ScenarioReport {
    let opts = RunOptions {
        runner: runner.clone(),
        kexts: kexts.to_vec(),
        timeout: Duration::from_secs(120),
        faults: None,
    };
    let r = emu::run(&opts, scenario);
    eprintln!("{}", r.render());
    r
}

/// What must be the same on both architectures: the verdict, each step's name
/// and outcome, its detail, and the kext's log (statistics included). Details
/// that carry what differs between any two runs are left out: load addresses
/// and image sizes, and the ephemeral loopback ports of real sockets (socket
/// addresses, and the PROXY v2 headers that encode them).
fn comparable(r: &ScenarioReport) -> (bool, Vec<(String, bool, String)>, Vec<String>) {
    let steps = r
        .steps
        .iter()
        .map(|s| {
            let varies = s.what.starts_with("load ")
                || s.detail.contains("127.0.0.")
                || s.detail.contains("[::1]")
                || s.detail.contains("0d0a0d0a000d0a515549540a");
            let detail = if varies {
                String::new()
            } else {
                s.detail.clone()
            };
            (s.what.clone(), s.ok, detail)
        })
        .collect();
    let log = r.log.iter().map(|l| mask_loopback_ports(l)).collect();
    (r.passed, steps, log)
}

/// `line` with the port of every loopback socket address (`127.0.0.N:PORT`,
/// `[::1]:PORT`) replaced by `PORT`: the kext logs the real sockets' ephemeral
/// ports, which differ between any two runs.
fn mask_loopback_ports(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = ["127.0.0.", "[::1]:"]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, *p)))
        .min()
    {
        let (i, prefix) = at;
        out.push_str(&rest[..i + prefix.len()]);
        rest = &rest[i + prefix.len()..];
        if prefix == "127.0.0." {
            // the host part, then `:PORT`
            let host = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            out.push_str(&rest[..host]);
            rest = &rest[host..];
            match rest.strip_prefix(':') {
                Some(r) => rest = r,
                None => continue,
            }
            out.push(':');
        }
        let port = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if port > 0 {
            out.push_str("PORT");
        }
        rest = &rest[port..];
    }
    out.push_str(rest);
    out
}

#[test]
fn loopback_ports_are_masked_and_nothing_else() {
    assert_eq!(
        mask_loopback_ports("redirect 203.0.113.10:80 -> 127.0.0.1:37541 and [::1]:43599 x"),
        "redirect 203.0.113.10:80 -> 127.0.0.1:PORT and [::1]:PORT x"
    );
    assert_eq!(
        mask_loopback_ports("127.0.0.2 no port"),
        "127.0.0.2 no port"
    );
}

fn same_on_both(scenario: &str, kexts: &[PathBuf], expect_pass: bool) {
    let a = run(arm64e(), scenario, kexts);
    let x = run(&x86_64(), scenario, kexts);
    assert_eq!(a.passed, expect_pass, "arm64e {scenario}:\n{}", a.render());
    assert!(a.fault.is_none(), "arm64e {scenario}:\n{}", a.render());
    assert_eq!(
        comparable(&a),
        comparable(&x),
        "{scenario}: the arm64e and x86_64 runs differ"
    );
}

#[test]
fn load_unload_both_kexts_arm64e() {
    let both = [bundle("PrxSocketFilter"), bundle("PrxIPFilter")];
    same_on_both("load-unload", &both, true);
    let r = run(arm64e(), "load-unload", &both);
    for name in ["PrxSocketFilter", "PrxIPFilter"] {
        assert!(
            r.log.iter().any(|l| l == &format!("prx: {name} stopped")),
            "{:?}",
            r.log
        );
    }
}

#[test]
fn socket_filter_scenarios_arm64e() {
    same_on_both("sockfilter", &[bundle("PrxSocketFilter")], true);
}

#[test]
fn ip_filter_scenarios_arm64e() {
    let ip = [bundle("PrxIPFilter")];
    for scenario in [
        "ip-tcp",
        "nat-tcp4",
        "nat-tcp6",
        "nat-tcp4-split",
        "nat-udp4",
        "nat-udp6",
        "nat-block-tcp4",
        "nat-block-tcp6",
        "nat-icmp4",
        "nat-icmp6",
        "nat-hostile",
    ] {
        same_on_both(scenario, &ip, true);
    }
    // The rules' negative control fails the same way on both.
    same_on_both("nat-tcp4-udp-rules", &ip, false);
}

/// The discriminators the emulator authenticates with are clang's for the C
/// function-pointer types (kextld's independent derivation).
#[test]
fn call_discriminators_match_kextld() {
    use kextld::ptrauth::function_type_discriminator as d;
    use vm::emu::arch::disc;
    for (value, encoding) in [
        (disc::KMOD_START_STOP, "FiPPE"),
        (disc::SF_UNREGISTERED, "FviE"),
        (disc::SF_ATTACH, "FiPPE"),
        (disc::SF_DETACH, "FvPPE"),
        (disc::SF_NOTIFY, "FvPPiPE"),
        (disc::SF_DATA, "FiPPPPPiE"),
        (disc::SF_CONNECT_OUT, "FiPPPE"),
        (disc::IPF_INPUT, "FiPPiiE"),
        (disc::IPF_OUTPUT, "FiPPPE"),
        (disc::IPF_DETACH, "FvPE"),
        (disc::CTL_CONNECT, "FiPPPE"),
        (disc::CTL_DISCONNECT, "FiPiPE"),
        (disc::CTL_SETOPT, "FiPiPiPiE"),
        (disc::CTL_GETOPT, "FiPiPiPPE"),
    ] {
        assert_eq!(value, d(encoding), "{encoding}");
    }
}

/// A copy of `name`'s bundle whose arm64e slice has the chained pointer of
/// every fixup `pick` selects rewritten by `patch` (raw 64-bit value → new
/// value); returns the copy and the first such fixup.
fn patched_bundle(
    name: &str,
    copy: &str,
    pick: impl Fn(&chained::Fixup, &image::KextImage) -> bool,
    patch: impl Fn(u64) -> u64,
) -> (PathBuf, chained::Fixup) {
    use object::read::macho::{FatArch, MachOFatFile32};
    let src = bundle(name);
    let exe = image::resolve_executable(&src).expect("bundle executable");
    let mut file = std::fs::read(&exe).expect("read kext");
    let fat = MachOFatFile32::parse(&*file).expect("universal binary");
    let arm = fat
        .arches()
        .iter()
        .find(|a| a.cputype().0 == CPU_TYPE_ARM64)
        .expect("arm64e slice");
    let slice_off = arm.offset() as usize;
    let img = image::parse_arch(&file, CPU_TYPE_ARM64).expect("arm64e slice parses");
    let mut mem = vec![0u8; img.vm_size as usize];
    for s in &img.segments {
        mem[s.vmaddr as usize..(s.vmaddr + s.filesize) as usize]
            .copy_from_slice(&img.bytes[s.fileoff as usize..(s.fileoff + s.filesize) as usize]);
    }
    let (off, len) = img.chained_fixups.expect("LC_DYLD_CHAINED_FIXUPS");
    let fixups = chained::decode(&img.bytes[off as usize..(off + len) as usize], &mem)
        .expect("chained fixups decode");
    let picked: Vec<chained::Fixup> = fixups.into_iter().filter(|f| pick(f, &img)).collect();
    assert!(!picked.is_empty(), "no slot to patch in {name}");
    for f in &picked {
        let seg = img.segment_at(f.slot).expect("slot segment");
        let at = slice_off + (seg.fileoff + f.slot - seg.vmaddr) as usize;
        let raw = u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
        file[at..at + 8].copy_from_slice(&patch(raw).to_le_bytes());
    }
    let f = picked[0].clone();
    let dst = scratch().join(format!("{copy}.kext"));
    let mac = dst.join("Contents/MacOS");
    std::fs::create_dir_all(&mac).expect("mkdir");
    std::fs::copy(
        src.join("Contents/Info.plist"),
        dst.join("Contents/Info.plist"),
    )
    .expect("Info.plist");
    std::fs::write(mac.join(exe.file_name().expect("name")), &file).expect("write copy");
    (dst, f)
}

fn is_auth_rebase_with(f: &chained::Fixup, diversity: u16) -> bool {
    matches!(f.target, Target::Rebase { .. }) && f.auth.is_some_and(|a| a.diversity == diversity)
}

/// The symbol a rebase points to.
fn target_symbol(f: &chained::Fixup, img: &image::KextImage) -> String {
    match f.target {
        Target::Rebase { offset, .. } => img.symbolize(offset).map(|(s, _)| s).unwrap_or_default(),
        Target::Bind { ref symbol, .. } => symbol.clone(),
    }
}

/// A plain rebase of the same target, `next` kept (what kextld writes for an
/// unmarked slot).
fn make_plain(raw: u64) -> u64 {
    (raw & 0xFFFF_FFFF) | (raw & (0x7FF << 51))
}

#[test]
fn a_callback_signed_with_another_discriminator_faults_naming_the_callback() {
    let ip_input = vm::emu::arch::disc::IPF_INPUT;
    let (copy, f) = patched_bundle(
        "PrxIPFilter",
        "PrxIPFilterBadDisc",
        |f, _| is_auth_rebase_with(f, ip_input),
        |raw| raw ^ (1 << 32), // diversity 0x78FF → 0x78FE
    );
    let img = image::parse_arch(
        &std::fs::read(image::resolve_executable(&bundle("PrxIPFilter")).unwrap()).unwrap(),
        CPU_TYPE_ARM64,
    )
    .unwrap();
    let callee = target_symbol(&f, &img);
    assert!(!callee.is_empty(), "the ipf_input slot points to a symbol");
    let r = run(arm64e(), "ip-tcp", &[copy]);
    assert!(!r.passed, "{}", r.render());
    let fault = r.fault.as_deref().expect("a fault");
    assert!(
        fault.starts_with(
            "pointer authentication failure (PAC, key IA) calling the kext's ipf_input"
        ),
        "{fault}"
    );
    assert!(fault.contains(&format!("({callee}+0x0 ")), "{fault}");
    assert!(fault.contains("SIGSEGV"), "{fault}");
    // The same copy still loads and starts: only the call through that slot faults.
    assert!(r.steps.iter().any(|s| s.what.starts_with("start ") && s.ok));
}

#[test]
fn a_plain_start_stop_rebase_faults_at_start() {
    let (copy, _) = patched_bundle(
        "PrxSocketFilter",
        "PrxSocketFilterPlainStart",
        |f, img| {
            let ki = img.defined("_kmod_info").expect("_kmod_info").n_value;
            f.slot == ki + emu::loader::kmod_info::START as u64
        },
        make_plain,
    );
    let r = run(arm64e(), "load-unload", &[copy]);
    assert!(!r.passed, "{}", r.render());
    let fault = r.fault.as_deref().expect("a fault");
    assert!(
        fault.starts_with(
            "pointer authentication failure (PAC, key IA) calling the kext's kmod_info start/stop"
        ),
        "{fault}"
    );
    assert!(r.log.is_empty(), "start never ran: {:?}", r.log);
}

/// The fixups of a bundle's arm64e slice.
fn arm64e_fixups(bundle: &Path) -> Vec<chained::Fixup> {
    let exe = image::resolve_executable(bundle).expect("bundle executable");
    let file = std::fs::read(&exe).expect("read kext");
    let img = image::parse_arch(&file, CPU_TYPE_ARM64).expect("arm64e slice parses");
    let mut mem = vec![0u8; img.vm_size as usize];
    for s in &img.segments {
        mem[s.vmaddr as usize..(s.vmaddr + s.filesize) as usize]
            .copy_from_slice(&img.bytes[s.fileoff as usize..(s.fileoff + s.filesize) as usize]);
    }
    let (off, len) = img.chained_fixups.expect("LC_DYLD_CHAINED_FIXUPS");
    chained::decode(&img.bytes[off as usize..(off + len) as usize], &mem)
        .expect("chained fixups decode")
}

/// PrxIPFilter rebuilt from source with the `sign_slot!` mark of its
/// `ipf_input` slots left out (`--cfg prx_unmarked_slot="ipf_input"`, which
/// `common::ip_filter!` honours), linked and bundled by the same build as
/// `cargo xtask build --release`, in a target directory of its own. kextld then
/// writes a plain rebase for the slot, and xnu's authenticated call (here:
/// `autia` + `blr`) fails.
#[test]
fn a_callback_slot_built_without_its_mark_faults() {
    let target = xtask::target_dir(&root()).join("prx-tests/unmarked-ipf-input");
    let opts = xtask::build::BuildOptions {
        release: true,
        archs: vec![kextld::Arch::Arm64e],
        kexts: vec!["ip".into()],
        target_dir: Some(target),
    };
    let built = xtask::build::build_variant(&root(), &opts, &["prx_unmarked_slot=\"ipf_input\""])
        .unwrap_or_else(|e| panic!("building PrxIPFilter without the ipf_input mark: {e:#}"));
    let variant = built
        .iter()
        .find(|b| b.path.ends_with("PrxIPFilter.kext"))
        .expect("PrxIPFilter.kext built")
        .path
        .clone();

    // The normal build signs both ipf_input slots (IPv4 and IPv6 filters);
    // the variant signs none of them, and everything else as before.
    let signed = |b: &Path, disc: u16| {
        arm64e_fixups(b)
            .iter()
            .filter(|f| is_auth_rebase_with(f, disc))
            .count()
    };
    let normal = bundle("PrxIPFilter");
    use vm::emu::arch::disc;
    assert_eq!(signed(&normal, disc::IPF_INPUT), 2, "normal build");
    assert_eq!(signed(&variant, disc::IPF_INPUT), 0, "unmarked build");
    for d in [disc::IPF_OUTPUT, disc::IPF_DETACH] {
        assert_eq!(
            signed(&variant, d),
            signed(&normal, d),
            "discriminator {d:#x}"
        );
    }

    // Pointer authentication is probabilistic: an unsigned pointer passes
    // `autia` when its zero PAC bits happen to equal the PAC computed for it,
    // with qemu-aarch64's user-mode address space about once in 128 runs
    // (each emulator process has fresh keys; a fresh-clone run met it once).
    // Up to four runs, each a new process: a false failure once in 2^28.
    let fault = (0..4)
        .find_map(|_| run(arm64e(), "ip-tcp", std::slice::from_ref(&variant)).fault)
        .expect("a fault in one of four runs");
    assert!(fault.contains("calling the kext's ipf_input"), "{fault}");
}
