//! The filters' shared control: one [`Config`] (enabled, proxies, rules,
//! generation) behind an xnu reader-writer lock, and [`Ctl`], the
//! kern_control both kexts register, which applies the control protocol's
//! set requests (`common::net::control`) to it and answers status, rules,
//! lookups and statistics. What differs between the kexts is their
//! [`Filter`] implementation: their state, what they count, how they look
//! a client up, and the requests only one of them serves.
//!
//! - A new rule set is built outside the lock ([`krules::from_msg`]) and
//!   swapped in under the write lock with the generation bumped; the old one
//!   is freed after the lock is released.
//! - Proxies change under the write lock, and [`Filter::proxies_set`] runs
//!   inside it, so copies the kext keeps elsewhere change in the same step.

use core::ffi::c_int;
use core::marker::PhantomData;

use super::KextError;
use super::ctl::{self, Control};
use super::errno::{ENOTCONN, ENOTSUP, Errno};
use super::global::Global;
use super::lock::RwLock;
use super::log::Logger;
use super::rules::{self as krules, KRuleSet};
use crate::net::addr::Endpoint;
use crate::net::control::{self as proto, GetRequest, SetRequest, StatsWriter, Status, Timeouts};
use crate::net::kextlog::{Dec, LogLevel};
use crate::net::origdst::Original;
use crate::net::policy::Proxies;
use crate::net::proxy_v2::AuthKey;
use crate::net::rules::Action;

/// One consistent configuration: what a new connection or flow is decided with.
pub struct Config {
    /// Filtering enabled.
    pub enabled: bool,
    /// The proxies, one per family.
    pub proxies: Proxies,
    /// The rules.
    pub rules: KRuleSet,
    /// Rule sets installed since start.
    pub generation: u32,
}

impl Config {
    /// The configuration at start: enabled, no proxies, no rules (direct),
    /// behind its lock.
    pub fn initial() -> Result<RwLock<Config>, KextError> {
        let config = Config {
            enabled: true,
            proxies: Proxies::default(),
            rules: krules::empty(Action::Direct).map_err(|_| KextError::Failed)?,
            generation: 0,
        };
        RwLock::try_new(config).map_err(|_| KextError::Failed)
    }

    fn status(&self, attached: u32) -> Status {
        Status {
            enabled: self.enabled,
            rules: u32::try_from(self.rules.len()).unwrap_or(u32::MAX),
            generation: self.generation,
            attached,
            clients: u32::try_from(ctl::clients()).unwrap_or(u32::MAX),
            proxies: self.proxies,
        }
    }
}

/// A kext's side of the control.
pub trait Filter: Send + Sync + Sized + 'static {
    /// The kext's state (installed between start and stop).
    const STATE: &'static Global<Self>;
    /// The kext's log (rule changes are logged on it; its level is set here).
    const LOG: &'static Logger;
    /// Whether the rules line names the rule set (`... (rule set N)`): the
    /// socket filter's always has, the IP filter's never did.
    const RULES_LINE_NAMES_SET: bool = true;
    /// The configuration.
    fn config(&self) -> &RwLock<Config>;
    /// What the status reports as attached (sockets or IP filters).
    fn attached(&self) -> u32;
    /// The proxies changed to `p`; called under the configuration's write lock.
    fn proxies_set(&self, _p: Proxies) {}
    /// `SetTimeouts` (NAT timeouts); refused unless the kext has some.
    fn set_timeouts(&self, _t: Timeouts) -> Result<(), Errno> {
        Err(ENOTSUP)
    }
    /// The original destination of a redirected client endpoint.
    fn lookup(&self, client: &Endpoint) -> Option<Original>;
    /// The PROXY v2 headers' key, if the kext writes any.
    fn auth_key(&self) -> Option<&AuthKey> {
        None
    }
    /// Writes the statistics (`generation`: the configuration's).
    fn stats(&self, generation: u32, w: &mut StatsWriter);
}

/// The kern_control handlers for the kext whose side is `F` (declare it with
/// [`kern_control!`](crate::kern_control)).
pub struct Ctl<F>(PhantomData<F>);

/// Installs the rule set `msg` describes (built outside the lock).
fn set_rules<F: Filter>(st: &F, msg: &proto::RulesMsg<'_>) -> Result<(), Errno> {
    let set = krules::from_msg(msg)?;
    let (old, generation) = {
        let mut cfg = st.config().write();
        cfg.generation = cfg.generation.wrapping_add(1);
        (core::mem::replace(&mut cfg.rules, set), cfg.generation)
    };
    drop(old); // freed outside the lock
    let (n, default) = (Dec::u(msg.count()), msg.default_action());
    if F::RULES_LINE_NAMES_SET {
        let set = Dec::u(generation);
        let line = format_args!("rules: {n} rule(s), default {default:?} (rule set {set})");
        F::LOG.log(LogLevel::Decisions, line);
    } else {
        let line = format_args!("rules: {n} rule(s), default {default:?}");
        F::LOG.log(LogLevel::Decisions, line);
    }
    Ok(())
}

impl<F: Filter> Control for Ctl<F> {
    type Unit = ();

    fn connect(_unit: u32) -> Result<(), Errno> {
        Ok(())
    }

    fn setopt(_u: &mut (), opt: c_int, data: &[u8]) -> Result<(), Errno> {
        let st = F::STATE.get().ok_or(ENOTCONN)?;
        match proto::decode_set(opt, data).map_err(proto::Error::errno)? {
            SetRequest::Rules(m) => set_rules(&*st, &m),
            SetRequest::Proxies(p) => {
                let mut cfg = st.config().write();
                cfg.proxies = p;
                st.proxies_set(p);
                Ok(())
            }
            SetRequest::Enabled(on) => {
                st.config().write().enabled = on;
                Ok(())
            }
            SetRequest::Timeouts(t) => st.set_timeouts(t),
            SetRequest::LogLevel(l) => {
                F::LOG.set_level(l);
                Ok(())
            }
        }
    }

    fn getopt(_u: &mut (), opt: c_int, buf: &mut [u8]) -> Result<usize, Errno> {
        let st = F::STATE.get().ok_or(ENOTCONN)?;
        let r = match proto::decode_get(opt, buf).map_err(proto::Error::errno)? {
            GetRequest::Lookup(client) => {
                let found = st.lookup(&client);
                proto::encode_lookup_response(found.as_ref(), buf)
            }
            GetRequest::Status => {
                let s = st.config().read().status(st.attached());
                proto::encode_status(&s, buf)
            }
            GetRequest::Rules => {
                let cfg = st.config().read();
                proto::encode_rules_response(cfg.rules.default_action(), cfg.rules.rules(), buf)
            }
            // The control is privileged (root only): the key goes to prxd.
            GetRequest::AuthKey => match st.auth_key() {
                Some(k) => proto::encode_auth_key_response(k, buf),
                None => return Err(ENOTSUP),
            },
            GetRequest::Stats => {
                let generation = st.config().read().generation;
                let mut w = StatsWriter::new();
                st.stats(generation, &mut w);
                w.encode(buf)
            }
        };
        r.map_err(proto::Error::errno)
    }
}
