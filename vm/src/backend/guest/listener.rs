//! The redirection evidence: an `nc -l` listener on the guest standing in for
//! the proxy, the one-rule redirect loaded through prxctl, `curl` as the
//! client, and what the listener received (with or without a PROXY v2 header).

use super::report::Rep;
use super::{Flow, parse_od, parse_proxy_v2, show_bytes};
use crate::backend::ssh::{SshError, sh_quote};

/// The listener and rule of the redirection scenarios.
pub(super) struct Redirect {
    /// Guest file with the listener's bytes.
    pub(super) out: String,
    /// The listener's pid.
    pub(super) pid: String,
}

impl Flow<'_> {
    /// Starts the `nc -l` listener and loads the one-rule redirect through
    /// prxctl. `None` (with failed steps) when either did not work; the
    /// listener is then already stopped.
    pub(super) fn redirect_setup(&self, rep: &mut Rep) -> Option<Redirect> {
        let w = &self.cfg.work_dir;
        let port = self.cfg.listener_port;
        let r = self.start_listener(rep, "127.0.0.1")?;
        // prxctl's real interface: the listener is the proxy, and a one-rule file
        // sends the test destination to it with a PROXY v2 header.
        let (dst_host, dst_port) = self
            .cfg
            .redirect_from
            .rsplit_once(':')
            .unwrap_or((self.cfg.redirect_from.as_str(), "80"));
        let rules = format!("{w}/prx-vmtest-rules.toml");
        let setup = format!(
            "{x} proxy set 127.0.0.1:{port} && printf '[[rule]]\\ndst = \"%s\"\\nports = \"%s\"\\naction = \"proxy-v2\"\\n' {} {} > {r} && {x} rules load {r} && {x} enable",
            sh_quote(dst_host),
            sh_quote(dst_port),
            r = sh_quote(&rules),
            x = self.prxctl()
        );
        if self
            .step_run(
                rep,
                "set proxy and load redirect rule (prxctl)",
                &setup,
                self.cfg.command_timeout,
            )
            .is_none()
        {
            self.stop_listener(&r);
            return None;
        }
        let _ = self.step_run(
            rep,
            "status (prxctl)",
            &format!("{} status", self.prxctl()),
            self.cfg.command_timeout,
        );
        Some(r)
    }

    /// Starts `nc -l BIND PORT` in the background, recording what it receives.
    pub(super) fn start_listener(&self, rep: &mut Rep, bind: &str) -> Option<Redirect> {
        let w = &self.cfg.work_dir;
        let port = self.cfg.listener_port;
        let out = format!("{w}/listener-{port}.bin");
        let listen = format!(
            "rm -f {o}; nohup nc -l {b} {port} > {o} 2> {o}.err < /dev/null & echo $!",
            o = sh_quote(&out),
            b = sh_quote(bind)
        );
        let o = self.step_run(
            rep,
            "start listener (nc -l)",
            &listen,
            self.cfg.command_timeout,
        )?;
        Some(Redirect {
            out,
            pid: o.stdout.trim().to_string(),
        })
    }

    /// `prxctl disable`, then stop the listener.
    pub(super) fn redirect_teardown(&self, rep: &mut Rep, r: &Redirect) {
        let _ = self.step_run(
            rep,
            "disable redirection (prxctl)",
            &format!("{} disable", self.prxctl()),
            self.cfg.command_timeout,
        );
        self.stop_listener(r);
    }

    pub(super) fn stop_listener(&self, r: &Redirect) {
        if !r.pid.is_empty() {
            let _ = self.run(&format!("kill {} 2>/dev/null; true", sh_quote(&r.pid)));
        }
    }

    /// `curl` to `dst`; its own status is evidence only: with a listener that
    /// never answers it times out (28), and an unredirected documentation
    /// address answers nothing.
    pub(super) fn curl(&self, rep: &mut Rep, what: &str, dst: &str) {
        let url = format!("http://{dst}/prx-vmtest");
        let curl = format!(
            "curl -sS -m 5 -o /dev/null {} ; echo curl-exit=$?",
            sh_quote(&url)
        );
        let _ = self.step_run(rep, what, &curl, self.cfg.command_timeout);
    }

    /// What the listener has received so far (after giving it a moment to write).
    pub(super) fn listener_bytes(&self, r: &Redirect) -> Result<Vec<u8>, SshError> {
        let o = self.run(&format!(
            "sleep 1; od -An -tx1 -v {} 2>/dev/null; true",
            sh_quote(&r.out)
        ))?;
        Ok(parse_od(&o.stdout))
    }

    pub(super) fn judge_listener(&self, rep: &mut Rep, bytes: &[u8]) {
        if bytes.is_empty() {
            rep.step(
                "listener received",
                false,
                format!(
                    "nothing: the connection to {} was not redirected to the listener",
                    self.cfg.redirect_from
                ),
            );
            return;
        }
        let (body, header) = match parse_proxy_v2(bytes) {
            Some(h) => (bytes.get(h.len..).unwrap_or_default(), Some(h)),
            None => (bytes, None),
        };
        match &header {
            Some(h) => {
                let ok = h.dst == self.cfg.redirect_from;
                rep.step(
                    "PROXY v2 header",
                    ok,
                    format!(
                        "command {} family {:#04x} src {} dst {}{}",
                        h.command,
                        h.family,
                        h.src,
                        h.dst,
                        if ok {
                            String::new()
                        } else {
                            format!(" (expected dst {})", self.cfg.redirect_from)
                        }
                    ),
                );
            }
            None => {
                rep.step(
                    "PROXY v2 header",
                    true,
                    "none (the bytes start with the client's request)",
                );
            }
        }
        let text = String::from_utf8_lossy(body);
        rep.step(
            "listener received",
            text.contains("GET /prx-vmtest HTTP/1.1"),
            format!(
                "{} byte(s): {}",
                bytes.len(),
                show_bytes(&bytes[..bytes.len().min(400)])
            ),
        );
    }
}
