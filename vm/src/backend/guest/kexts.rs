//! Loading and unloading: `kmutil` on macOS 11+, `kextload`/`kextunload`/
//! `kextstat` before; a refused load is classified and stops the run with
//! the instructions for the user.

use super::report::Rep;
use super::{Flow, GuestKext, classify_load_failure, refusal_instructions};
use crate::backend::ssh::{SshError, sh_quote};

impl Flow<'_> {
    pub(super) fn load_cmd(&self, k: &GuestKext) -> String {
        if self.major >= 11 {
            format!("sudo -n kmutil load -p {}", sh_quote(&k.path))
        } else {
            format!("sudo -n kextload {}", sh_quote(&k.path))
        }
    }

    pub(super) fn unload_cmd(&self, k: &GuestKext) -> String {
        if self.major >= 11 {
            format!("sudo -n kmutil unload -b {}", sh_quote(&k.bundle_id))
        } else {
            format!("sudo -n kextunload -b {}", sh_quote(&k.bundle_id))
        }
    }

    pub(super) fn loaded_cmd(&self, k: &GuestKext) -> String {
        if self.major >= 11 {
            format!(
                "kmutil showloaded --list-only --bundle-identifier {}",
                sh_quote(&k.bundle_id)
            )
        } else {
            format!("kextstat -l -b {}", sh_quote(&k.bundle_id))
        }
    }

    pub(super) fn is_loaded(&self, k: &GuestKext) -> Result<bool, SshError> {
        let o = self.run(&self.loaded_cmd(k))?;
        Ok(o.stdout
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == k.bundle_id)))
    }

    /// Loads every kext; `Err(instructions)` when macOS refused one (stop everything).
    pub(super) fn load_all(
        &self,
        rep: &mut Rep,
        loaded: &mut Vec<GuestKext>,
    ) -> Result<bool, String> {
        for k in &self.cfg.kexts {
            let cmd = self.load_cmd(k);
            match self.run(&cmd) {
                Ok(o) if o.ok() => {
                    rep.step(
                        format!("load {}", k.bundle_id),
                        true,
                        format!("`{cmd}`: {}", o.text()),
                    );
                }
                Ok(o) => {
                    let text = o.text();
                    rep.step(
                        format!("load {}", k.bundle_id),
                        false,
                        format!("`{cmd}` exited with {}: {text}", o.status),
                    );
                    if let Some(r) = classify_load_failure(&text) {
                        let how = refusal_instructions(r, self.major);
                        rep.fail(how.clone());
                        return Err(how);
                    }
                    return Ok(false);
                }
                Err(e) => {
                    rep.step(format!("load {}", k.bundle_id), false, e.to_string());
                    return Ok(false);
                }
            }
            loaded.push(k.clone());
            match self.is_loaded(k) {
                Ok(true) => rep.step(
                    format!("{} is loaded", k.bundle_id),
                    true,
                    format!("`{}` lists it", self.loaded_cmd(k)),
                ),
                Ok(false) => rep.step(
                    format!("{} is loaded", k.bundle_id),
                    false,
                    format!(
                        "`{}` does not list it after a successful load",
                        self.loaded_cmd(k)
                    ),
                ),
                Err(e) => rep.step(format!("{} is loaded", k.bundle_id), false, e.to_string()),
            };
        }
        Ok(rep.r.failures.is_empty())
    }

    pub(super) fn unload_all(&self, rep: &mut Rep, loaded: &[GuestKext]) {
        for k in loaded.iter().rev() {
            let cmd = self.unload_cmd(k);
            if self
                .step_run(
                    rep,
                    &format!("unload {}", k.bundle_id),
                    &cmd,
                    self.cfg.command_timeout,
                )
                .is_some()
            {
                match self.is_loaded(k) {
                    Ok(false) => {
                        rep.step(format!("{} is gone", k.bundle_id), true, "no longer listed")
                    }
                    Ok(true) => rep.step(
                        format!("{} is gone", k.bundle_id),
                        false,
                        "still listed after a successful unload",
                    ),
                    Err(e) => rep.step(format!("{} is gone", k.bundle_id), false, e.to_string()),
                };
            }
        }
    }
}
