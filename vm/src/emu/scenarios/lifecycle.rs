//! A kext's life in a scenario: load and start it, stop it (retrying while busy)
//! and unload it as the kernel would, and check the ledgers afterwards.

use std::path::Path;

use crate::emu::abi;
use crate::emu::abi::net::deliver_all;
use crate::emu::image;
use crate::emu::kernel;
use crate::emu::kernel::events::{self, Event, step};
use crate::emu::loader::{self, LoadedKext};

/// How many times the emulator calls a stop routine that returns busy (as a user
/// running kextunload again: the kernel itself never retries), delivering
/// pending kernel work (sf_unregistered, ipf_detach) between attempts. A refused
/// stop must leave everything the kext registered in place (`stop-refused-inert`).
const STOP_ATTEMPTS: u32 = 8;

/// A loaded kext in the scenario.
pub struct Kext {
    pub loaded: LoadedKext,
    pub label: String,
    pub started: bool,
}

pub fn load_and_start(path: &Path, tag: i32) -> Result<Option<Kext>, String> {
    let img = image::read(path).map_err(|e| e.to_string())?;
    let kext = loader::load(img, &abi::lookup, tag).map_err(|e| e.to_string())?;
    let label = if kext.name.is_empty() {
        path.display().to_string()
    } else {
        kext.name.clone()
    };
    events::emit(&Event::Loaded {
        kext: label.clone(),
        path: path.display().to_string(),
        base: kext.base,
        size: kext.size,
        stubs: kext.stubs,
        stubs_len: kext.stubs_len,
        stub_symbols: kext.stub_symbols.clone(),
        cputype: Some(kext.image.cputype),
    });
    kernel::with(|k| {
        for (s, e) in kext.code_ranges() {
            k.code.push((s, e, label.clone()));
        }
    });
    step(
        format!("load {label}"),
        true,
        format!(
            "version {}, {} bytes at {:#x}, {} KPI symbols bound {}",
            kext.version,
            kext.size,
            kext.base,
            kext.stub_symbols.len(),
            kext.binding_kind()
        ),
    );
    for init in kext.initialisers("__mod_init_func") {
        abi::call::invoke(init, &format!("static initialiser of {label}"), || {
            kext.call_void(init)
        });
    }
    if kext.start == 0 {
        step(format!("start {label}"), true, "no start routine");
        return Ok(Some(Kext {
            loaded: kext,
            label,
            started: true,
        }));
    }
    let r = abi::call::invoke(kext.start, &format!("start {label}"), || {
        kext.call_entry(kext.start)
    });
    match r {
        Some(0) => {
            step(format!("start {label}"), true, "returned KERN_SUCCESS");
            Ok(Some(Kext {
                loaded: kext,
                label,
                started: true,
            }))
        }
        Some(r) => {
            step(
                format!("start {label}"),
                false,
                format!("returned {r}; the kernel unloads the kext without calling stop"),
            );
            // The kernel unloads the kext at once: nothing may still be registered
            // (pending work is not waited for).
            check_nothing_registered(&kext, &label, "start failed");
            deliver_all();
            Ok(None)
        }
        None => Ok(None),
    }
}

pub fn stop_and_unload(k: &mut Kext) -> bool {
    let label = k.label.clone();
    if k.loaded.stop != 0 {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = working(&k.loaded);
            let r = abi::call::invoke(k.loaded.stop, &format!("stop {label}"), || {
                k.loaded.call_entry(k.loaded.stop)
            });
            if matches!(r, Some(r) if r != 0) {
                // xnu does not retry a refused stop: the kext stays loaded and
                // must keep working as before.
                let after = working(&k.loaded);
                let lost: Vec<&String> = before.difference(&after).collect();
                if !lost.is_empty() {
                    kernel::with(|kern| {
                        kern.violation(
                            "stop-refused-inert",
                            format!(
                                "stop of {label} returned busy after removing {}: the kernel does not call stop again, so the kext stays loaded without them",
                                lost.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        )
                    });
                }
            }
            match r {
                Some(0) => {
                    step(
                        format!("stop {label}"),
                        true,
                        format!("returned KERN_SUCCESS (attempt {attempt})"),
                    );
                    break;
                }
                Some(r) => {
                    let pending = kernel::with(|k| k.deferred.len());
                    step(
                        format!("stop {label}"),
                        true,
                        format!(
                            "attempt {attempt} returned {r} (busy): kept loaded; {pending} pending notification(s) delivered before retrying"
                        ),
                    );
                    let delivered = deliver_all();
                    if attempt >= STOP_ATTEMPTS || (delivered == 0 && attempt >= 2) {
                        step(
                            format!("stop {label}"),
                            false,
                            format!(
                                "still busy after {attempt} attempts with no kernel work pending: the kext can never be unloaded"
                            ),
                        );
                        return false;
                    }
                }
                None => return false,
            }
        }
    }
    check_nothing_registered(&k.loaded, &label, "stop returned KERN_SUCCESS");
    for term in k.loaded.initialisers("__mod_term_func") {
        abi::call::invoke(term, &format!("static terminator of {label}"), || {
            k.loaded.call_void(term)
        });
    }
    kernel::with(|kern| kern.code.retain(|(_, _, l)| *l != label));
    match k.loaded.unload() {
        Ok(()) => {
            events::emit(&Event::Unloaded {
                kext: label.clone(),
            });
            step(
                format!("unload {label}"),
                true,
                "image unmapped (made inaccessible)",
            );
            true
        }
        Err(e) => {
            step(format!("unload {label}"), false, e.to_string());
            false
        }
    }
}

/// What the kext has registered and working: controls, socket filters, IP filters.
fn working(kext: &LoadedKext) -> std::collections::BTreeSet<String> {
    let owns = |addrs: &[u64]| addrs.iter().any(|&a| a != 0 && kext.contains_code(a));
    kernel::with(|k| {
        let mut set = std::collections::BTreeSet::new();
        for r in k.sflt.regs.values() {
            let addrs: Vec<u64> = r.filter.callbacks().iter().map(|&(_, a)| a).collect();
            if r.state == crate::emu::kernel::sflt::RegState::Registered && owns(&addrs) {
                set.insert(format!("socket filter '{}'", r.name));
            }
        }
        for r in &k.ipf.regs {
            if r.state == crate::emu::kernel::ipf::IpfState::Attached
                && owns(&[r.filter.input, r.filter.output, r.filter.detach])
            {
                set.insert(format!("IP filter '{}'", r.name));
            }
        }
        for r in &k.ctl.regs {
            if r.registered && owns(&[r.connect, r.disconnect, r.send, r.setopt, r.getopt]) {
                set.insert(format!("kern_control '{}'", r.name));
            }
        }
        set
    })
}

/// After a successful stop (or a failed start) nothing of this kext may stay
/// registered with the kernel: its callbacks would run in unloaded memory.
fn check_nothing_registered(kext: &LoadedKext, label: &str, when: &str) {
    let owns = |addrs: &[u64]| {
        addrs
            .iter()
            .any(|&a| a != 0 && kext.contains_code(crate::emu::arch::strip(a)))
    };
    kernel::with(|k| {
        let mut found = Vec::new();
        for r in k.sflt.live() {
            let addrs: Vec<u64> = r.filter.callbacks().iter().map(|&(_, a)| a).collect();
            if owns(&addrs) {
                found.push(format!(
                    "socket filter '{}' (handle {:#x}) is {}",
                    r.name,
                    r.filter.handle,
                    match r.state {
                        crate::emu::kernel::sflt::RegState::Registered =>
                            "still registered (sflt_unregister never called)",
                        _ => "unregistering: sf_unregistered has not been delivered yet",
                    }
                ));
            }
        }
        for r in k.ipf.live() {
            if owns(&[r.filter.input, r.filter.output, r.filter.detach]) {
                found.push(format!(
                    "IP filter '{}' is {}",
                    r.name,
                    match r.state {
                        crate::emu::kernel::ipf::IpfState::Attached =>
                            "still attached (ipf_remove never called)",
                        _ => "being removed: ipf_detach has not run yet",
                    }
                ));
            }
        }
        for r in k.ctl.live() {
            if owns(&[r.connect, r.disconnect, r.send, r.setopt, r.getopt]) {
                found.push(format!("kern_control '{}' is still registered", r.name));
            }
        }
        for f in found {
            k.violation(
                "stop-while-registered",
                format!("{when} for {label} while {f}"),
            );
        }
    });
}

/// End-of-run ledgers: everything the kexts allocated must be returned.
pub fn check_ledgers() -> bool {
    kernel::with(|k| {
        let allocs: Vec<String> = k
            .allocations
            .iter()
            .map(|(a, al)| {
                format!(
                    "{} bytes at {a:#x} from {} in {}",
                    al.size, al.via, al.during
                )
            })
            .collect();
        for a in allocs {
            k.violation("memory-leak", format!("never freed: {a}"));
        }
        let tags: Vec<String> = k.malloc_tags.values().cloned().collect();
        for t in tags {
            k.violation(
                "malloc-tag-leak",
                format!("OSMallocTag '{t}' never freed with OSMalloc_Tagfree"),
            );
        }
        for l in k.leaked_locks() {
            k.violation("lock-leak", format!("{l} never freed"));
        }
        let leaked = abi::mbuf::leaked(k);
        for m in leaked {
            k.violation("mbuf-leak", m);
        }
        let n = k.violations.len();
        step(
            "ledgers",
            n == 0,
            if n == 0 {
                "memory, locks, mbufs: all returned".to_string()
            } else {
                format!("{n} violation(s)")
            },
        );
        n == 0
    })
}
