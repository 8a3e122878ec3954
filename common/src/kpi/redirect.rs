//! A socket filter's redirected connections, as mechanism: what follows from
//! a connect decision ([`policy::Connect`](crate::net::policy::Connect)) once
//! the kext has taken it. The kext decides (its rules, under its
//! configuration snapshot, for its process); this module carries the decision
//! out, with the same counters, log lines and errno values for any socket
//! filter:
//!
//! - [`carry_out`] (`sf_connect_out`): counts and logs the decision, and on a
//!   redirect rewrites the destination to the proxy. A rewrite that fails
//!   fails the connection (EHOSTUNREACH) rather than let it go direct against
//!   the rules; it is never half-done. `block` refuses with ECONNREFUSED.
//! - [`Redirects::connected`] (`sf_notify`, connected): records the original
//!   destination under the client's address (the socket's local address, as
//!   the proxy sees it) in the [`net::origdst`](crate::net::origdst) table
//!   behind an xnu mutex, for the control's lookups; [`Redirected::detach`]
//!   removes it. When the rule asks for one, it returns the PROXY v2 header
//!   (with the client's pid and process name as custom TLVs, ending with the
//!   authenticating TLV) as an [`Injection`] tagged with the filter's
//!   [`MbufTag`].
//! - [`Redirected::injected`] and [`Redirected::admits`] (`sf_data_out`) keep
//!   the header's order ([`proxy_v2::Sending`]): the header passes (it carries
//!   the tag), application data before it is refused (ENOTCONN), and if the
//!   header could not be injected the connection's data is refused (EPIPE),
//!   never sent without it.

use core::ffi::CStr;

use super::KextError;
use super::alloc::KSlice;
use super::errno::{ECONNREFUSED, EHOSTUNREACH, ENOTCONN, EPIPE, Errno};
use super::lock::Mutex;
use super::log::Logger;
use super::random;
use super::sflt::{Data, Injection, MbufTag, SockAddrMut};
use crate::net::addr::Endpoint;
use crate::net::control::{StatCounters, stat};
use crate::net::kextlog::{Ep, LogLevel, RuleNo, Who};
use crate::net::origdst::{Original, Slot, Table};
use crate::net::policy::Connect;
use crate::net::proxy_v2::{self, AuthKey, Held, Sending};

/// Where a socket filter counts and logs what it does with connections (its
/// counters should list `CONN_PASSED`, `CONN_BLOCKED`, `CONN_REDIRECTED`,
/// `CONN_FAILED`, `PROXY_HEADERS` and `ORIGDST_FULL`; an id it does not list
/// is not counted).
pub struct Report<'a, const N: usize> {
    /// The kext's counters.
    pub counters: &'a StatCounters<N>,
    /// The kext's decision log.
    pub log: &'a Logger,
}

/// What the redirected connections of one socket filter share: the original
/// destinations, the tag of the headers it injects, and their key.
pub struct Redirects {
    origdst: Mutex<Table<KSlice<Slot>>>,
    tag: MbufTag,
    /// The PROXY v2 headers' authentication key, drawn at start.
    auth_key: AuthKey,
}

impl Redirects {
    /// An empty original-destination table of `capacity` slots, the mbuf tag
    /// of module `tag` (type 1) and a fresh key.
    pub fn try_new(capacity: usize, tag: &CStr) -> Result<Redirects, KextError> {
        let slots = KSlice::try_new(capacity, Slot::default()).map_err(|_| KextError::Failed)?;
        let origdst = Mutex::try_new(Table::new(slots)).map_err(|_| KextError::Failed)?;
        let tag = MbufTag::find(tag, 1).map_err(|_| KextError::Failed)?;
        // A fresh key per load (and so per boot): read_random never blocks.
        let mut key = [0u8; 32];
        random::fill(&mut key);
        Ok(Redirects {
            origdst,
            tag,
            auth_key: AuthKey(key),
        })
    }

    /// The original destination recorded for `client`.
    pub fn lookup(&self, client: &Endpoint) -> Option<Original> {
        self.origdst.lock().get(client)
    }

    /// The key the headers are authenticated with.
    pub fn auth_key(&self) -> &AuthKey {
        &self.auth_key
    }

    /// Whether `data` is a header this filter injected.
    pub fn is_ours(&self, data: &Data<'_>) -> bool {
        data.has_tag(self.tag)
    }

    /// `r`'s connection is established, from `client` (the socket's local
    /// address; `None` when it could not be read), for the process `who`:
    /// records the original destination (`ORIGDST_FULL` counted when the
    /// table is full) and returns the header to inject, if one is due. A
    /// header that cannot be built fails ([`Redirected::injected`]'s failure).
    pub fn connected<const N: usize>(
        &self,
        r: &mut Redirected,
        client: Option<Endpoint>,
        who: Who<'_>,
        report: &Report<'_, N>,
    ) -> Option<Injection> {
        let pid = u32::try_from(who.0).unwrap_or(0);
        if let Some(client) = client {
            let o = Original {
                dst: r.orig,
                pid,
                rule: r.rule,
            };
            if self.origdst.lock().insert(&client, o).is_ok() {
                r.recorded = Some(client);
            } else {
                report.counters.count(stat::ORIGDST_FULL);
            }
        }
        if r.header != Sending::Pending {
            return None;
        }
        // The client's pid and process name ride along as custom TLVs.
        let inj = client.and_then(|client| {
            let h = proxy_v2::encode_authenticated(
                &client,
                &r.orig,
                pid,
                who.1.as_bytes(),
                &self.auth_key,
            );
            Injection::new(h.as_bytes(), Some(self.tag))
        });
        if inj.is_none() {
            r.header_failed(who, report);
        }
        inj
    }
}

/// One redirected connection (kept in the socket's cookie from
/// `connect_out` to `detach`).
pub struct Redirected {
    orig: Endpoint,
    rule: u32,
    /// The client address the original destination is recorded under.
    recorded: Option<Endpoint>,
    header: Sending,
}

/// Carries out `decision` for the connection of `who` to `dst`, whose
/// destination address is `to`: counts and logs it; a pass is `Ok(None)`, a
/// block ECONNREFUSED, a redirect rewrites `to` to the proxy and is
/// `Ok(Some)` (EHOSTUNREACH, `to` untouched, when it cannot be rewritten).
pub fn carry_out<const N: usize>(
    decision: Connect,
    dst: Endpoint,
    to: &mut SockAddrMut<'_>,
    who: Who<'_>,
    report: &Report<'_, N>,
) -> Result<Option<Redirected>, Errno> {
    let Report { counters, log } = report;
    match decision {
        Connect::Pass(why) => {
            counters.count(stat::CONN_PASSED);
            log.log(
                LogLevel::Debug,
                format_args!("pass {} ({why:?}; {})", Ep(&dst), who),
            );
            Ok(None)
        }
        Connect::Block { rule } => {
            counters.count(stat::CONN_BLOCKED);
            log.log(
                LogLevel::Decisions,
                format_args!("block {} ({}; {})", Ep(&dst), RuleNo(rule), who),
            );
            Err(ECONNREFUSED)
        }
        Connect::Redirect {
            to: proxy,
            proxy_v2,
            rule,
        } => {
            if to.set(&proxy).is_err() {
                // The address is untouched: fail the connection rather than
                // let it go direct against the rules.
                counters.count(stat::CONN_FAILED);
                log.log(
                    LogLevel::Decisions,
                    format_args!(
                        "redirect of {} to {} failed: the address could not be rewritten ({})",
                        Ep(&dst),
                        Ep(&proxy),
                        who
                    ),
                );
                return Err(EHOSTUNREACH);
            }
            log.log(
                LogLevel::Decisions,
                format_args!(
                    "redirect {} -> {}{} ({}; {})",
                    Ep(&dst),
                    Ep(&proxy),
                    if proxy_v2 { " with PROXY v2" } else { "" },
                    RuleNo(rule),
                    who
                ),
            );
            let r = Redirected {
                orig: dst,
                rule,
                recorded: None,
                header: Sending::wanted(proxy_v2),
            };
            counters.count(stat::CONN_REDIRECTED);
            Ok(Some(r))
        }
    }
}

impl Redirected {
    /// The header injected by `connected` went out (counted in
    /// `PROXY_HEADERS`) or failed.
    pub fn injected<const N: usize>(
        &mut self,
        result: Result<(), Errno>,
        who: Who<'_>,
        report: &Report<'_, N>,
    ) {
        match result {
            Ok(()) => {
                self.header = Sending::Sent;
                report.counters.count(stat::PROXY_HEADERS);
            }
            Err(_) => self.header_failed(who, report),
        }
    }

    /// Whether outgoing data passes: `ours()` tells whether it is the header
    /// itself (asked only while the header is pending or failed).
    pub fn admits(&self, ours: impl FnOnce() -> bool) -> Result<(), Errno> {
        self.header.admits(ours).map_err(|held| match held {
            Held::NotYet => ENOTCONN,
            Held::Failed => EPIPE,
        })
    }

    /// The socket is going away: its original destination is forgotten.
    pub fn detach(self, redirects: &Redirects) {
        if let Some(client) = self.recorded {
            redirects.origdst.lock().remove(&client);
        }
    }

    fn header_failed<const N: usize>(&mut self, who: Who<'_>, report: &Report<'_, N>) {
        self.header = Sending::Failed;
        report.counters.count(stat::CONN_FAILED);
        report.log.log(
            LogLevel::Decisions,
            format_args!(
                "PROXY v2 header not sent ({}); refusing the connection's data",
                who
            ),
        );
    }
}
