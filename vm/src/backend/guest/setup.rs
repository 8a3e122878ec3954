//! Setup, once per run before the scenarios: the guest's macOS version, its
//! boot time and panic reports (the baseline of the panic checks), the
//! package copied and installed, and the installed prxctl checked against
//! the package's version.

use super::report::Rep;
use super::{Flow, major_version};
use crate::backend::ssh::sh_quote;

impl Flow<'_> {
    /// Runs the setup steps into `rep`; `Err(why)` (the reason every scenario
    /// is then reported as not run) at the first step that failed.
    pub(super) fn setup(&mut self, rep: &mut Rep) -> Result<(), &'static str> {
        let Some(v) = self.step_run(
            rep,
            "guest macOS version",
            "sw_vers -productVersion",
            self.cfg.command_timeout,
        ) else {
            return Err("the guest could not be reached");
        };
        match major_version(&v.stdout) {
            Some(m) => self.major = m,
            None => {
                rep.fail(format!(
                    "cannot read a macOS version from `{}`",
                    v.stdout.trim()
                ));
                return Err("not a macOS guest");
            }
        }
        match (self.boottime(), self.list_panics()) {
            (Ok(b), Ok(p)) => {
                rep.step(
                    "boot time and panic reports before the run",
                    true,
                    format!("kern.boottime `{b}`; {} existing panic report(s)", p.len()),
                );
                self.boottime = b;
                self.panics = p;
            }
            (Err(e), _) | (_, Err(e)) => {
                rep.step(
                    "boot time and panic reports before the run",
                    false,
                    e.to_string(),
                );
                return Err("the guest could not be inspected");
            }
        }
        let name = self
            .cfg
            .pkg
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prx.pkg".into());
        let remote_pkg = format!("{}/{name}", self.cfg.work_dir);
        if self
            .step_run(
                rep,
                "guest work directory",
                &format!("mkdir -p {}", sh_quote(&self.cfg.work_dir)),
                self.cfg.command_timeout,
            )
            .is_none()
        {
            return Err("setup failed");
        }
        match self
            .t
            .copy_to(&self.cfg.pkg, &remote_pkg, self.cfg.install_timeout)
        {
            Ok(()) => rep.step(
                "copy the package",
                true,
                format!("{} -> {remote_pkg}", self.cfg.pkg.display()),
            ),
            Err(e) => {
                rep.step("copy the package", false, e.to_string());
                return Err("the package could not be copied");
            }
        };
        let install = format!("sudo -n installer -pkg {} -target /", sh_quote(&remote_pkg));
        if self
            .step_run(
                rep,
                "install the package",
                &install,
                self.cfg.install_timeout,
            )
            .is_none()
        {
            return Err("the package did not install");
        }
        // The installed prxctl is the one the package carries.
        let cmd = format!("{} --version", sh_quote(&self.cfg.prxctl));
        match (self.run(&cmd), &self.cfg.expect_version) {
            (Ok(o), Some(v)) if o.ok() => {
                let want = format!("prxctl {v}");
                rep.step(
                    "installed prxctl is the built version",
                    o.stdout.trim() == want,
                    format!("`{cmd}`: {} (expected `{want}`)", o.stdout.trim()),
                );
            }
            (Ok(o), None) if o.ok() => {
                rep.step(
                    "installed prxctl answers",
                    true,
                    format!(
                        "`{cmd}`: {} (the package name has no version to compare)",
                        o.stdout.trim()
                    ),
                );
            }
            (Ok(o), _) => {
                rep.step(
                    "installed prxctl is the built version",
                    false,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
            }
            (Err(e), _) => {
                rep.step(
                    "installed prxctl is the built version",
                    false,
                    e.to_string(),
                );
            }
        }
        if !rep.r.failures.is_empty() {
            return Err("the installed prxctl is not the one built");
        }
        Ok(())
    }
}
