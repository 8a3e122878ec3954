//! Symbol resolution: which objects are loaded, and which definition each
//! external name refers to.
//!
//! Objects given directly are always loaded. An archive member is loaded only
//! when it defines a name that is undefined at that point; archives are scanned
//! again until nothing changes (a fixed point, as ld64 does), so the order of
//! archives on the command line does not matter. The decision uses each member's
//! own symbol table, not the archive's `__.SYMDEF`, which may be stale. The
//! search starts from `_kmod_info` (as if `-u _kmod_info` were given), so a
//! kext's staticlib links on its own.

use std::collections::{BTreeMap, BTreeSet};

use super::LinkError;
use super::input::{Disposition, Input, Object};
use crate::macho::*;

/// What an external name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Global {
    /// Defined by `objects[obj].symbols[sym]`.
    Defined {
        /// Index into [`Loaded::objects`].
        obj: usize,
        /// Index into that object's symbols.
        sym: usize,
    },
    /// Not defined by any loaded object: bound by the kernel at load time.
    Undefined {
        /// Every reference is weak (`N_WEAK_REF`).
        weak: bool,
    },
}

/// The loaded objects and the global symbol table.
#[derive(Debug)]
pub(crate) struct Loaded<'a> {
    /// Loaded objects, in load order.
    pub objects: Vec<Object<'a>>,
    /// External names (`N_EXT`, including private externs) → resolution.
    pub globals: BTreeMap<String, Global>,
}

/// Loads the inputs (objects always, archive members on demand) and resolves names.
///
/// `roots` are names treated as undefined from the start (ld64's `-u`): the
/// kext's `_kmod_info`, so that a staticlib alone pulls in the kext's object.
pub(crate) fn resolve<'a>(inputs: Vec<Input<'a>>, roots: &[&str]) -> Result<Loaded<'a>, LinkError> {
    let mut loaded = Loaded {
        objects: Vec::new(),
        globals: BTreeMap::new(),
    };
    for root in roots {
        loaded
            .globals
            .insert(root.to_string(), Global::Undefined { weak: false });
    }
    let mut archives = Vec::new();
    for input in inputs {
        match input {
            Input::Object(o) => loaded.add(o)?,
            Input::Archive(members) => {
                // Lazy index: first member defining each external name.
                let mut index = BTreeMap::new();
                for (m, member) in members.iter().enumerate() {
                    for s in &member.symbols {
                        if s.is_ext() && s.is_defined() {
                            index.entry(s.name.clone()).or_insert(m);
                        }
                    }
                }
                let slots: Vec<Option<Object<'_>>> = members.into_iter().map(Some).collect();
                archives.push((index, slots));
            }
        }
    }
    loop {
        let mut changed = false;
        for (index, slots) in &mut archives {
            let wanted: BTreeSet<usize> = loaded
                .globals
                .iter()
                .filter(|(_, g)| matches!(g, Global::Undefined { .. }))
                .filter_map(|(name, _)| index.get(name).copied())
                .collect();
            for m in wanted {
                if let Some(member) = slots[m].take() {
                    loaded.add(member)?;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok(loaded)
}

impl<'a> Loaded<'a> {
    fn add(&mut self, object: Object<'a>) -> Result<(), LinkError> {
        for s in &object.sections {
            if let Disposition::Reject { problem, hint } = &s.disposition {
                return Err(LinkError::UnsupportedSection {
                    input: object.name.clone(),
                    segment: s.segname.clone(),
                    section: s.sectname.clone(),
                    problem: problem.clone(),
                    hint,
                });
            }
        }
        let obj = self.objects.len();
        for (sym, s) in object.symbols.iter().enumerate() {
            if s.is_stab() || !s.is_ext() {
                continue;
            }
            let unsupported = |problem: &str, hint: &'static str| LinkError::UnsupportedSymbol {
                input: object.name.clone(),
                symbol: s.name.clone(),
                problem: problem.to_string(),
                hint,
            };
            match s.kind() {
                N_UNDF if s.n_value != 0 => {
                    return Err(unsupported(
                        "tentative (common) definition",
                        "compile with -fno-common, or give the variable an initialiser",
                    ));
                }
                N_UNDF => {
                    let weak = s.n_desc & N_WEAK_REF != 0;
                    match self.globals.get_mut(&s.name) {
                        None => {
                            self.globals
                                .insert(s.name.clone(), Global::Undefined { weak });
                        }
                        Some(Global::Undefined { weak: w }) => *w &= weak,
                        Some(Global::Defined { .. }) => {}
                    }
                }
                N_SECT | N_ABS => match self.globals.get(&s.name) {
                    None | Some(Global::Undefined { .. }) => {
                        self.globals
                            .insert(s.name.clone(), Global::Defined { obj, sym });
                    }
                    Some(Global::Defined { obj: o, sym: i }) => {
                        let (o, i) = (*o, *i);
                        let first_weak = if o == obj {
                            object.symbols[i].is_weak_def()
                        } else {
                            self.objects[o].symbols[i].is_weak_def()
                        };
                        if !s.is_weak_def() {
                            if !first_weak {
                                let first = if o == obj {
                                    object.name.clone()
                                } else {
                                    self.objects[o].name.clone()
                                };
                                return Err(LinkError::DuplicateSymbol {
                                    symbol: s.name.clone(),
                                    first,
                                    second: object.name.clone(),
                                });
                            }
                            self.globals
                                .insert(s.name.clone(), Global::Defined { obj, sym });
                        }
                    }
                },
                _ => {
                    return Err(unsupported(
                        "indirect or prebound symbol",
                        "kexts can only define symbols in sections; remove the alias",
                    ));
                }
            }
        }
        self.objects.push(object);
        Ok(())
    }
}
