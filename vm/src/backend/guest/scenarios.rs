//! The scenarios: each loads the kexts, runs its own steps, and leaves the
//! unload, the log and the panic check to [`Flow::scenario`].

use super::report::Rep;
use super::{
    Flow, NON_MATCHING_DST, OTHER_INSTALLED, PKG_ID, SOCKET_FILTER_ID, judge_ip_counters,
    judge_ip_listener, parse_ifaddr, parse_proxy_v2, parse_route_interface, show_bytes,
};
use crate::backend::ssh::sh_quote;
use crate::report::ScenarioReport;

impl Flow<'_> {
    pub(super) fn scenario(&mut self, name: &str) -> (ScenarioReport, Option<String>) {
        let mut rep = Rep::new(name, &self.cfg.kexts);
        let since = match self.run("date '+%Y-%m-%d %H:%M:%S'") {
            Ok(o) if o.ok() => o.stdout.trim().to_string(),
            Ok(o) => {
                rep.step(
                    "guest clock",
                    false,
                    format!("`date` exited with {}: {}", o.status, o.text()),
                );
                return (rep.finish(), None);
            }
            Err(e) => {
                rep.step("guest clock", false, e.to_string());
                return (rep.finish(), None);
            }
        };
        let mut loaded = Vec::new();
        let refused = match self.load_all(&mut rep, &mut loaded) {
            Err(how) => Some(how),
            Ok(true) => {
                match name {
                    "socket-connect" => self.redirection(&mut rep),
                    "non-matching" => self.non_matching(&mut rep),
                    "ip-nat" => self.ip_nat(&mut rep),
                    "uninstall" => {
                        // The uninstaller unloads the kexts itself.
                        self.uninstall(&mut rep);
                        loaded.clear();
                    }
                    "unload-open" => {
                        // Unloaded there (after the connection closed): not again below.
                        let unloaded = self.unload_open(&mut rep);
                        if unloaded {
                            loaded.retain(|k| k.bundle_id != SOCKET_FILTER_ID);
                        }
                    }
                    _ => {}
                }
                None
            }
            Ok(false) => None,
        };
        self.unload_all(&mut rep, &loaded);
        self.collect_log(&mut rep, &since);
        self.check_panic(&mut rep);
        (rep.finish(), refused)
    }

    /// `socket-connect`: listener, rule, client, evidence.
    pub(super) fn redirection(&self, rep: &mut Rep) {
        let Some(r) = self.redirect_setup(rep) else {
            return;
        };
        self.curl(rep, "client (curl)", &self.cfg.redirect_from);
        match self.listener_bytes(&r) {
            Ok(b) => self.judge_listener(rep, &b),
            Err(e) => {
                rep.step("listener received", false, e.to_string());
            }
        }
        self.redirect_teardown(rep, &r);
    }

    /// `non-matching`: with the rule loaded, a connection the rule does not
    /// match must not reach the listener; a matching one afterwards must (the
    /// control: without it a filter that redirects nothing would pass).
    pub(super) fn non_matching(&self, rep: &mut Rep) {
        let Some(r) = self.redirect_setup(rep) else {
            return;
        };
        self.curl(
            rep,
            "client to a non-matching destination (curl)",
            NON_MATCHING_DST,
        );
        match self.listener_bytes(&r) {
            Ok(b) if b.is_empty() => {
                rep.step(
                    "non-matching traffic untouched",
                    true,
                    format!(
                        "the listener received nothing from the connection to {NON_MATCHING_DST}"
                    ),
                );
                self.curl(
                    rep,
                    "control: client to the matching destination (curl)",
                    &self.cfg.redirect_from,
                );
                match self.listener_bytes(&r) {
                    Ok(b) => self.judge_listener(rep, &b),
                    Err(e) => {
                        rep.step("listener received", false, e.to_string());
                    }
                }
            }
            Ok(b) => {
                let header = match parse_proxy_v2(&b) {
                    Some(h) => format!("PROXY v2 header dst {}; ", h.dst),
                    None => String::new(),
                };
                rep.step(
                    "non-matching traffic untouched",
                    false,
                    format!(
                        "the connection to {NON_MATCHING_DST}, which the rule ({} only) does not match, reached the listener: {header}{} byte(s): {}",
                        self.cfg.redirect_from,
                        b.len(),
                        show_bytes(&b[..b.len().min(400)])
                    ),
                );
            }
            Err(e) => {
                rep.step("non-matching traffic untouched", false, e.to_string());
            }
        }
        self.redirect_teardown(rep, &r);
    }

    /// `ip-nat`: PrxIPFilter rewrites the destination of the client's packets
    /// to the proxy, so the proxy must be an address those packets can reach:
    /// the guest's own address on the interface towards the test destination,
    /// with the listener bound to it. Only flows that start after the rules are
    /// loaded are translated (TCP: on a SYN); `curl` opens a new one.
    pub(super) fn ip_nat(&self, rep: &mut Rep) {
        let (host, port) = self
            .cfg
            .redirect_from
            .rsplit_once(':')
            .unwrap_or((self.cfg.redirect_from.as_str(), "80"));
        let route = format!("route -n get {}", sh_quote(host));
        let Some(o) = self.step_run(
            rep,
            "route to the test destination",
            &route,
            self.cfg.command_timeout,
        ) else {
            return;
        };
        let Some(ifname) = parse_route_interface(&o.stdout) else {
            rep.step(
                "outgoing interface",
                false,
                format!("no `interface:` line in `{route}`'s answer: {}", o.text()),
            );
            return;
        };
        let getaddr = format!("ipconfig getifaddr {}", sh_quote(&ifname));
        let Some(o) = self.step_run(
            rep,
            "guest address (ipconfig getifaddr)",
            &getaddr,
            self.cfg.command_timeout,
        ) else {
            return;
        };
        let Some(addr) = parse_ifaddr(&o.stdout) else {
            rep.step(
                "guest address",
                false,
                format!(
                    "`{getaddr}` gave no usable IPv4 address (loopback, unspecified and multicast are not): {}",
                    o.text()
                ),
            );
            return;
        };
        let lport = self.cfg.listener_port;
        let proxy = format!("{addr}:{lport}");
        rep.step(
            "guest address",
            true,
            format!("{addr} on {ifname}: the proxy is {proxy}"),
        );
        let Some(r) = self.start_listener(rep, &addr.to_string()) else {
            return;
        };
        let rules = format!("{}/prx-vmtest-ip-rules.toml", self.cfg.work_dir);
        let setup = format!(
            "{x} --kext ip proxy set {p} && printf '[[rule]]\\ndst = \"%s\"\\nports = \"%s\"\\nprotocol = \"tcp\"\\naction = \"proxy\"\\n' {} {} > {r} && {x} --kext ip rules load {r} && {x} --kext ip enable",
            sh_quote(host),
            sh_quote(port),
            p = sh_quote(&proxy),
            r = sh_quote(&rules),
            x = self.prxctl()
        );
        if self
            .step_run(
                rep,
                "set proxy and load NAT rule (prxctl --kext ip)",
                &setup,
                self.cfg.command_timeout,
            )
            .is_none()
        {
            self.stop_listener(&r);
            return;
        }
        let status = &format!("{} --kext ip status", self.prxctl());
        let _ = self.step_run(
            rep,
            "status before (prxctl --kext ip)",
            status,
            self.cfg.command_timeout,
        );
        self.curl(rep, "client, a new flow (curl)", &self.cfg.redirect_from);
        match self.listener_bytes(&r) {
            Ok(b) => {
                let v = judge_ip_listener(&b, &self.cfg.redirect_from, &proxy);
                let ok = v.is_ok();
                rep.step("listener received", ok, v.unwrap_or_else(|e| e));
            }
            Err(e) => {
                rep.step("listener received", false, e.to_string());
            }
        }
        match self.run(status) {
            Ok(o) if o.ok() => {
                let v = judge_ip_counters(&o.stdout);
                let ok = v.is_ok();
                let d = v.unwrap_or_else(|e| e);
                rep.step(
                    "IP filter counters after the client (prxctl --kext ip status)",
                    ok,
                    format!("{d}; `{status}`: {}", o.text()),
                );
            }
            Ok(o) => {
                rep.step(
                    "IP filter counters after the client (prxctl --kext ip status)",
                    false,
                    format!("`{status}` exited with {}: {}", o.status, o.text()),
                );
            }
            Err(e) => {
                rep.step(
                    "IP filter counters after the client (prxctl --kext ip status)",
                    false,
                    e.to_string(),
                );
            }
        }
        let _ = self.step_run(
            rep,
            "disable NAT (prxctl --kext ip)",
            &format!("{} --kext ip disable", self.prxctl()),
            self.cfg.command_timeout,
        );
        self.stop_listener(&r);
    }

    /// `unload-open`: a redirected connection held open, then unloading the
    /// socket filter. Expected (prx's stop returns busy while sockets are
    /// attached): refused while open, success once closed. Returns whether the
    /// socket-filter kext was unloaded here (the caller then skips it).
    pub(super) fn unload_open(&mut self, rep: &mut Rep) -> bool {
        let Some(k) = self
            .cfg
            .kexts
            .iter()
            .find(|k| k.bundle_id == SOCKET_FILTER_ID)
            .cloned()
        else {
            rep.fail(format!("no kext {SOCKET_FILTER_ID} in the configuration"));
            return false;
        };
        let Some(r) = self.redirect_setup(rep) else {
            return false;
        };
        let w = &self.cfg.work_dir;
        let (host, port) = self
            .cfg
            .redirect_from
            .rsplit_once(':')
            .unwrap_or((self.cfg.redirect_from.as_str(), "80"));
        let writer_pid = format!("{w}/open-writer.pid");
        let client_out = format!("{w}/open-client.out");
        // The writer sends the request and then keeps nc's stdin open (its pid
        // is recorded; `exec sleep` keeps it), so the connection stays up; $! is nc's pid.
        let open = format!(
            "rm -f {wp}; nohup sh -c 'echo $$ > \"$1\"; printf \"GET /prx-vmtest HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n\" \"$2\"; exec sleep 600' sh {wp} {h} < /dev/null 2>/dev/null | nohup nc {h} {p} > {co} 2>&1 & echo $!",
            wp = sh_quote(&writer_pid),
            h = sh_quote(host),
            p = sh_quote(port),
            co = sh_quote(&client_out)
        );
        let nc_pid = self
            .step_run(
                rep,
                "open a redirected connection and keep it open (sleep | nc)",
                &open,
                self.cfg.command_timeout,
            )
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default();
        let close = format!(
            "kill {} $(cat {} 2>/dev/null) 2>/dev/null; sleep 1; true",
            sh_quote(&nc_pid),
            sh_quote(&writer_pid)
        );
        match self.listener_bytes(&r) {
            Ok(b) => self.judge_listener(rep, &b),
            Err(e) => {
                rep.step("listener received", false, e.to_string());
            }
        }
        if !nc_pid.is_empty() {
            let _ = self.step_run(
                rep,
                "the connection is still open",
                &format!("kill -0 {}", sh_quote(&nc_pid)),
                self.cfg.command_timeout,
            );
        }
        let cmd = self.unload_cmd(&k);
        let mut unloaded = false;
        match self.run(&cmd) {
            Ok(o) if o.ok() => {
                unloaded = true;
                rep.step(
                    "unload refused while the connection is open",
                    false,
                    format!("`{cmd}` succeeded with a redirected connection open (expected a refusal: PrxSocketFilter's stop returns busy while sockets are attached): {}", o.text()),
                );
            }
            Ok(o) => {
                rep.step(
                    "unload refused while the connection is open",
                    true,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
                match self.is_loaded(&k) {
                    Ok(true) => rep.step(
                        format!("{} still loaded after the refusal", k.bundle_id),
                        true,
                        format!("`{}` lists it", self.loaded_cmd(&k)),
                    ),
                    Ok(false) => rep.step(
                        format!("{} still loaded after the refusal", k.bundle_id),
                        false,
                        "no longer listed although the unload was refused",
                    ),
                    Err(e) => rep.step(
                        format!("{} still loaded after the refusal", k.bundle_id),
                        false,
                        e.to_string(),
                    ),
                };
            }
            Err(e) => {
                rep.step(
                    "unload refused while the connection is open",
                    false,
                    e.to_string(),
                );
            }
        }
        // The refused stop is the risky moment: look for a panic before going on.
        self.check_panic(rep);
        let _ = self.step_run(
            rep,
            "close the connection",
            &close,
            self.cfg.command_timeout,
        );
        self.redirect_teardown(rep, &r);
        if !unloaded
            && self
                .step_run(
                    rep,
                    &format!("unload {} after the connection is closed", k.bundle_id),
                    &cmd,
                    self.cfg.command_timeout,
                )
                .is_some()
        {
            unloaded = true;
            match self.is_loaded(&k) {
                Ok(false) => rep.step(format!("{} is gone", k.bundle_id), true, "no longer listed"),
                Ok(true) => rep.step(
                    format!("{} is gone", k.bundle_id),
                    false,
                    "still listed after a successful unload",
                ),
                Err(e) => rep.step(format!("{} is gone", k.bundle_id), false, e.to_string()),
            };
        }
        unloaded
    }

    /// `uninstall`: the pkg's uninstaller, then nothing of prx may remain:
    /// no kext loaded, no installed file, no receipt.
    pub(super) fn uninstall(&self, rep: &mut Rep) {
        let cmd = format!("sudo -n {}", sh_quote(&self.cfg.uninstaller));
        if self
            .step_run(rep, "run the uninstaller", &cmd, self.cfg.install_timeout)
            .is_none()
        {
            return;
        }
        for k in &self.cfg.kexts {
            match self.is_loaded(k) {
                Ok(false) => rep.step(
                    format!("{} is unloaded", k.bundle_id),
                    true,
                    format!("`{}` does not list it", self.loaded_cmd(k)),
                ),
                Ok(true) => rep.step(
                    format!("{} is unloaded", k.bundle_id),
                    false,
                    "still loaded after the uninstaller",
                ),
                Err(e) => rep.step(format!("{} is unloaded", k.bundle_id), false, e.to_string()),
            };
        }
        let mut paths: Vec<String> = self.cfg.kexts.iter().map(|k| k.path.clone()).collect();
        paths.push(self.cfg.prxctl.clone());
        paths.push(self.cfg.uninstaller.clone());
        paths.extend(OTHER_INSTALLED.iter().map(|p| p.to_string()));
        let quoted: Vec<String> = paths.iter().map(|p| sh_quote(p)).collect();
        let cmd = format!(
            "for p in {}; do [ -e \"$p\" ] && echo \"$p\"; done; true",
            quoted.join(" ")
        );
        match self.run(&cmd) {
            Ok(o) if o.ok() => {
                let left = o.stdout.trim();
                rep.step(
                    "installed files are gone",
                    left.is_empty(),
                    if left.is_empty() {
                        format!("none of {} remains", paths.join(", "))
                    } else {
                        format!("still there: {}", left.replace('\n', ", "))
                    },
                );
            }
            Ok(o) => {
                rep.step(
                    "installed files are gone",
                    false,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
            }
            Err(e) => {
                rep.step("installed files are gone", false, e.to_string());
            }
        }
        let cmd = format!("pkgutil --pkg-info {PKG_ID}");
        match self.run(&cmd) {
            Ok(o) => rep.step(
                "the receipt is forgotten",
                !o.ok(),
                format!("`{cmd}` exited with {}: {}", o.status, o.text()),
            ),
            Err(e) => rep.step("the receipt is forgotten", false, e.to_string()),
        };
    }
}
