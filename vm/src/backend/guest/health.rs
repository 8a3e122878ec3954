//! The guest's health around each scenario: the kexts' log lines for the
//! scenario's window (`log show`) and the kernel panic check (a changed
//! `kern.boottime`, a new panic report, a guest that no longer answers).

use super::report::Rep;
use super::{Flow, panic_reports};
use crate::backend::ssh::{SshError, sh_quote};

impl Flow<'_> {
    pub(super) fn boottime(&self) -> Result<String, SshError> {
        Ok(self
            .run("sysctl -n kern.boottime")?
            .stdout
            .trim()
            .to_string())
    }

    pub(super) fn list_panics(&self) -> Result<Vec<String>, SshError> {
        let dirs: Vec<String> = self
            .cfg
            .panic_report_dirs
            .iter()
            .map(|d| sh_quote(d))
            .collect();
        let o = self.run(&format!("ls -1 {} 2>/dev/null; true", dirs.join(" ")))?;
        Ok(panic_reports(&o.stdout))
    }

    /// New panic reports or a changed boot time: the kernel panicked (or the guest rebooted).
    pub(super) fn check_panic(&mut self, rep: &mut Rep) -> bool {
        let bt = match self.boottime() {
            Ok(b) => b,
            Err(e) => {
                rep.step("kernel panic check", false, format!("the guest no longer answers ({e}): it probably panicked or rebooted; see the serial console / VM log"));
                return false;
            }
        };
        let mut ok = true;
        if bt != self.boottime {
            ok &= rep.step(
                "kernel panic check: boot time",
                false,
                format!("kern.boottime changed from `{}` to `{bt}`: the guest rebooted unexpectedly, probably a kernel panic", self.boottime),
            );
            self.boottime = bt;
        } else {
            rep.step(
                "kernel panic check: boot time",
                true,
                format!("unchanged: {bt}"),
            );
        }
        match self.list_panics() {
            Ok(now) => {
                let new: Vec<&String> = now.iter().filter(|p| !self.panics.contains(p)).collect();
                if new.is_empty() {
                    rep.step(
                        "kernel panic check: panic reports",
                        true,
                        "no new panic report",
                    );
                } else {
                    let mut detail = format!(
                        "new kernel panic report(s): {}",
                        new.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if let Some(first) = new.first() {
                        for d in &self.cfg.panic_report_dirs {
                            let p = format!("{d}/{first}");
                            if let Ok(o) =
                                self.run(&format!("test -f {0} && head -c 2000 {0}", sh_quote(&p)))
                                && o.ok()
                            {
                                detail.push_str(&format!("\n{p}:\n{}", o.stdout.trim_end()));
                                break;
                            }
                        }
                    }
                    ok &= rep.step("kernel panic check: panic reports", false, detail);
                    self.panics = now;
                }
            }
            Err(e) => ok &= rep.step("kernel panic check: panic reports", false, e.to_string()),
        }
        ok
    }

    pub(super) fn collect_log(&self, rep: &mut Rep, since: &str) {
        let pred: Vec<String> = self
            .cfg
            .kexts
            .iter()
            .map(|k| format!("sender == \"{}\"", k.executable))
            .collect();
        let cmd = format!(
            "log show --style syslog --start {} --predicate {}",
            sh_quote(since),
            sh_quote(&pred.join(" OR "))
        );
        match self.run(&cmd) {
            Ok(o) if o.ok() => {
                rep.r.log = o
                    .stdout
                    .lines()
                    .filter(|l| {
                        !l.trim().is_empty()
                            && !l.starts_with("Timestamp")
                            && !l.starts_with("Filtering the log data")
                    })
                    .map(String::from)
                    .collect();
                rep.step(
                    "collect kext log",
                    true,
                    format!("`{cmd}`: {} line(s)", rep.r.log.len()),
                );
            }
            Ok(o) => {
                rep.step(
                    "collect kext log",
                    false,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
            }
            Err(e) => {
                rep.step("collect kext log", false, e.to_string());
            }
        }
    }
}
