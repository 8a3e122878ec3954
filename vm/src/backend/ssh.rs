//! The transport to a guest: the OpenSSH client (`ssh`, `scp`) run with
//! [`std::process::Command`], never an ssh library, so the user's keys, agent and
//! OpenSSH's own host-key checking apply unchanged.
//!
//! Every invocation is non-interactive (`BatchMode=yes`: no password or
//! passphrase prompts, keys come from `-i` or the agent), checks the host key
//! strictly against a `known_hosts` file the configuration names (the user's and
//! the global ones are not consulted), has a connect time-out and a time limit for
//! the whole command: when it runs out the local `ssh` is killed and the command
//! is reported as timed out (the remote process may outlive it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ssh`'s own exit status for its errors (connection, authentication, host key).
pub const SSH_ERROR_STATUS: i32 = 255;

/// How host keys are checked (`StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The host key must already be in the known_hosts file.
    #[default]
    Yes,
    /// First contact records the key in the known_hosts file; a changed key fails.
    AcceptNew,
}

/// Where and how to reach a guest.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A private key; when `None` the agent's (or ssh's default) keys are used.
    pub identity: Option<PathBuf>,
    /// The only known_hosts file consulted (and written with `AcceptNew`).
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
}

/// A finished remote command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
    /// stdout and stderr, trimmed, for evidence.
    pub fn text(&self) -> String {
        let (o, e) = (self.stdout.trim(), self.stderr.trim());
        match (o.is_empty(), e.is_empty()) {
            (true, true) => String::new(),
            (false, true) => o.to_string(),
            (true, false) => e.to_string(),
            (false, false) => format!("{o}\n{e}"),
        }
    }
}

/// Why a remote operation did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SshError {
    #[error("cannot start `{program}`: {reason} (install the OpenSSH client)")]
    Spawn { program: String, reason: String },
    #[error("`{what}` timed out after {secs:.0}s (the local ssh was killed)")]
    Timeout { what: String, secs: f64 },
    #[error("ssh to {dest} failed (status 255): {stderr}")]
    Transport { dest: String, stderr: String },
    #[error("copying {local} to {dest}:{remote} failed (status {status}): {stderr}")]
    Copy {
        local: String,
        dest: String,
        remote: String,
        status: i32,
        stderr: String,
    },
}

/// Quotes `s` for a POSIX shell (the remote login shell runs ssh's command line).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl SshTarget {
    /// `user@host` as ssh spells it (IPv6 literals are bracketed for scp).
    pub fn dest(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    fn common_options(&self) -> Vec<String> {
        let policy = match self.host_key_policy {
            HostKeyPolicy::Yes => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
        };
        let mut v = vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("StrictHostKeyChecking={policy}"),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ];
        if let Some(id) = &self.identity {
            v.push("-o".into());
            v.push("IdentitiesOnly=yes".into());
            v.push("-i".into());
            v.push(id.display().to_string());
        }
        v
    }

    /// The arguments of `ssh` running `remote_cmd` (a shell command line).
    pub fn ssh_args(&self, remote_cmd: &str) -> Vec<String> {
        let mut v = self.common_options();
        v.extend(["-p".into(), self.port.to_string(), "-T".into()]);
        v.push("--".into());
        v.push(self.dest());
        v.push(remote_cmd.to_string());
        v
    }

    /// The arguments of `scp` copying `local` to `remote` on the guest.
    pub fn scp_args(&self, local: &Path, remote: &str) -> Vec<String> {
        let mut v = self.common_options();
        v.extend(["-q".into(), "-P".into(), self.port.to_string()]);
        v.push("--".into());
        v.push(local.display().to_string());
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        v.push(format!("{}@{host}:{remote}", self.user));
        v
    }

    /// Runs `remote_cmd` on the guest with a time limit. A non-zero status of the
    /// command is a normal [`CmdOutput`]; ssh's own failure (255) is an error.
    pub fn run(&self, remote_cmd: &str, timeout: Duration) -> Result<CmdOutput, SshError> {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_args(remote_cmd));
        let out = run_with_timeout(cmd, "ssh", remote_cmd, timeout)?;
        if out.status == SSH_ERROR_STATUS {
            return Err(SshError::Transport {
                dest: format!("{}:{}", self.dest(), self.port),
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Copies a local file to `remote` (a path on the guest) with `scp`.
    pub fn copy_to(&self, local: &Path, remote: &str, timeout: Duration) -> Result<(), SshError> {
        let mut cmd = Command::new("scp");
        cmd.args(self.scp_args(local, remote));
        let what = format!("scp {} {remote}", local.display());
        let out = run_with_timeout(cmd, "scp", &what, timeout)?;
        if out.status != 0 {
            return Err(SshError::Copy {
                local: local.display().to_string(),
                dest: format!("{}:{}", self.dest(), self.port),
                remote: remote.to_string(),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(())
    }

    /// Polls with `true` until the guest answers or `deadline` passes (a booting VM).
    pub fn wait_ready(&self, deadline: Duration) -> Result<(), SshError> {
        let started = Instant::now();
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            match self.run(
                "true",
                left.max(Duration::from_secs(1))
                    .min(self.connect_timeout + Duration::from_secs(5)),
            ) {
                Ok(o) if o.ok() => return Ok(()),
                Ok(_) | Err(SshError::Transport { .. }) | Err(SshError::Timeout { .. })
                    if started.elapsed() < deadline =>
                {
                    std::thread::sleep(
                        Duration::from_secs(2).min(deadline.saturating_sub(started.elapsed())),
                    );
                }
                Ok(o) => {
                    return Err(SshError::Transport {
                        dest: format!("{}:{}", self.dest(), self.port),
                        stderr: format!("`true` exited with {}: {}", o.status, o.text()),
                    });
                }
                Err(SshError::Timeout { .. }) => {
                    return Err(SshError::Timeout {
                        what: format!("waiting for ssh on {}:{}", self.host, self.port),
                        secs: deadline.as_secs_f64(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Runs `cmd` with stdin closed, collecting stdout and stderr, killing it (only
/// this child, by its handle) when `timeout` runs out.
pub fn run_with_timeout(
    mut cmd: Command,
    program: &str,
    what: &str,
    timeout: Duration,
) -> Result<CmdOutput, SshError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SshError::Spawn {
        program: program.to_string(),
        reason: e.to_string(),
    })?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut b);
        }
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut b);
        }
        b
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    match status {
        None => Err(SshError::Timeout {
            what: what.to_string(),
            secs: timeout.as_secs_f64(),
        }),
        Some(st) => Ok(CmdOutput {
            // Killed by a signal: report it like a shell would.
            status: st.code().unwrap_or(128),
            stdout,
            stderr,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SshTarget {
        SshTarget {
            host: "mac.example".into(),
            port: 2222,
            user: "admin".into(),
            identity: Some("/keys/id_ed25519".into()),
            known_hosts: "/kh".into(),
            host_key_policy: HostKeyPolicy::Yes,
            connect_timeout: Duration::from_secs(7),
        }
    }

    #[test]
    fn ssh_arguments_are_batch_mode_with_our_known_hosts_and_time_outs() {
        let a = target().ssh_args("sw_vers -productVersion").join(" ");
        for needle in [
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/kh",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o ConnectTimeout=7",
            "-o IdentitiesOnly=yes -i /keys/id_ed25519",
            "-p 2222 -T -- admin@mac.example sw_vers -productVersion",
        ] {
            assert!(a.contains(needle), "{needle} not in {a}");
        }
        let s = target()
            .scp_args(Path::new("dist/p.pkg"), "prx-vmtest/p.pkg")
            .join(" ");
        assert!(
            s.ends_with("-q -P 2222 -- dist/p.pkg admin@mac.example:prx-vmtest/p.pkg"),
            "{s}"
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("dist/a-1.0.pkg"), "dist/a-1.0.pkg");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("sender == \"X\""), "'sender == \"X\"'");
        assert_eq!(sh_quote(""), "''");
    }
}
