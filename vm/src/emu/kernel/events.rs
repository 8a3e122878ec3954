//! The event stream a scenario writes as it runs: one JSON object per line.
//!
//! In a child process the stream goes to the pipe the parent reads, line by
//! line and flushed at once, so the parent still has everything up to the moment
//! a kext crashes the child. In-process (unit tests) events are only kept.

use std::io::Write;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The child's exit statuses, the other half of its protocol with the runner.
///
/// Exit status of a child whose scenario ran to the end (pass or fail is in the events).
pub const EXIT_DONE: i32 = 0;
/// Exit status after a fatal signal in the child.
pub const EXIT_FAULT: i32 = 86;
/// Exit status after the kext called `panic()`.
pub const EXIT_PANIC: i32 = 87;
/// Exit status when the scenario could not be set up (bad arguments, unreadable kext).
pub const EXIT_SETUP: i32 = 88;

/// Emits a step of the scenario and its outcome.
pub fn step(what: impl Into<String>, ok: bool, detail: impl Into<String>) {
    emit(&Event::Step {
        what: what.into(),
        ok,
        detail: detail.into(),
    });
}

/// A contract violation found by a ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Short stable identifier, e.g. `mbuf-double-free`.
    pub rule: String,
    /// The callback (or entry point) running when it happened, e.g. `ipf_output`.
    pub during: String,
    /// What happened, naming the object.
    pub detail: String,
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "kebab-case")]
pub enum Event {
    /// A line the kext logged (`printf`/`IOLog`), without its trailing newline.
    Log { text: String },
    /// A kext image was mapped: where, so faults can be mapped back to symbols.
    Loaded {
        kext: String,
        path: String,
        base: u64,
        size: u64,
        stubs: u64,
        stubs_len: u64,
        stub_symbols: Vec<String>,
        /// The slice that was mapped (`image::CPU_TYPE_*`); absent means the runner's own.
        #[serde(default)]
        cputype: Option<u32>,
    },
    /// A kext was unloaded (its image made inaccessible).
    Unloaded { kext: String },
    /// A step of the scenario (kmod start/stop, a callback, a traffic check) and its outcome.
    Step {
        what: String,
        ok: bool,
        detail: String,
    },
    /// A ledger or contract violation.
    Violation(Violation),
    /// The child died of a signal while running kext code (written by the signal handler).
    Fault {
        signal: i32,
        addr: u64,
        rip: u64,
        ret: u64,
        /// The kext callback the emulator was calling (`sf_data_in`, …), if any.
        #[serde(default)]
        call: String,
    },
}

static SINK: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sends events to `file` from now on (the child's stdout).
pub fn set_sink(file: std::fs::File) {
    if let Ok(mut s) = SINK.lock() {
        *s = Some(file);
    }
}

/// Writes one event line to the sink, if any.
pub fn emit(ev: &Event) {
    if let Ok(mut s) = SINK.lock()
        && let Some(f) = s.as_mut()
        && let Ok(mut line) = serde_json::to_vec(ev)
    {
        line.push(b'\n');
        // A write error means the parent is gone; nothing useful remains to do.
        let _ = f.write_all(&line);
    }
}
