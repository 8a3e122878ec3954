//! Every benchmark case runs and passes its self-checks with a tiny iteration
//! count, without valgrind (`cargo xtask bench` measures them; no timing or
//! instruction counts are asserted here).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_prx-bench");

fn cases() -> Vec<String> {
    let out = Command::new(BIN)
        .arg("--list")
        .output()
        .expect("running prx-bench --list");
    assert!(
        out.status.success(),
        "--list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut names = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "--list line {line:?}");
        let (lo, hi): (u64, u64) = (f[1].parse().expect("low"), f[2].parse().expect("high"));
        assert!(0 < lo && lo < hi, "{line:?}");
        names.push(f[0].to_owned());
    }
    for line in text.lines() {
        let baseline = line.split('\t').nth(3).expect("baseline column");
        assert!(
            baseline == "-" || names.iter().any(|n| n == baseline),
            "{line:?}"
        );
    }
    names
}

#[test]
fn every_case_runs_and_checks_itself() {
    let names = cases();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let out = Command::new(BIN)
            .args(["--case", name, "--iterations", "3"])
            .output()
            .expect("running prx-bench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("self-check ok"),
            "case {name}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unknown_cases_and_zero_iterations_are_refused() {
    let out = Command::new(BIN)
        .args(["--case", "nope"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args(["--case", "output-v4", "--iterations", "0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}
