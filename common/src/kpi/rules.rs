//! The shared rules (`common::net::rules`) in kernel storage: what both kexts
//! install when the control protocol's `SetRules` arrives.

use super::alloc::KSlice;
use super::errno::{ENOMEM, Errno};
use crate::net::control::{Error, RulesMsg};
use crate::net::rules::{Action, IndexEntry, Rule, RuleSet, index_len};

/// A rule set in fallibly allocated kernel memory.
pub type KRuleSet = RuleSet<KSlice<Rule>, KSlice<IndexEntry>>;

/// An empty set with `default` as its action.
pub fn empty(default: Action) -> Result<KRuleSet, Errno> {
    let r = KSlice::try_new(0, Rule::default()).map_err(|_| ENOMEM)?;
    let i = KSlice::try_new(index_len(0), IndexEntry::default()).map_err(|_| ENOMEM)?;
    RuleSet::new(r, i, default).map_err(|_| Error::Field.errno())
}

/// The set a decoded `SetRules` message describes (records validated again,
/// index built); nothing is installed here.
pub fn from_msg(msg: &RulesMsg<'_>) -> Result<KRuleSet, Errno> {
    let n = msg.count();
    let mut rules = KSlice::try_new(n, Rule::default()).map_err(|_| ENOMEM)?;
    for (slot, r) in rules.as_mut().iter_mut().zip(msg.rules()) {
        *slot = r.map_err(Error::errno)?;
    }
    let index = KSlice::try_new(index_len(n), IndexEntry::default()).map_err(|_| ENOMEM)?;
    RuleSet::new(rules, index, msg.default_action()).map_err(|_| Error::Field.errno())
}
