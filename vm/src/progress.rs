//! Progress of a run while it happens: each guest step and each finished
//! scenario, with elapsed times, for the front end (`cargo xtask vm-test`) to
//! print as they come. A real-guest run takes many minutes; without this it is
//! silent until every report is ready.
//!
//! The backends call [`emit`]; the front end installs a sink with
//! [`set_sink`]. Without a sink (library use, tests) events are dropped.

use std::sync::Mutex;
use std::time::Duration;

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step of a scenario (guest backends) ended.
    Step {
        /// The scenario (or `setup`).
        scenario: String,
        /// What the step did.
        what: String,
        /// Whether it succeeded.
        ok: bool,
        /// Time since the scenario started.
        elapsed: Duration,
    },
    /// A scenario (or a machine-level report) finished.
    Finished {
        /// The scenario.
        scenario: String,
        /// Whether it passed.
        passed: bool,
        /// How long it took.
        elapsed: Duration,
    },
}

impl Event {
    /// One line, e.g. `  setup: install the package ok (12.3 s)`.
    pub fn line(&self) -> String {
        match self {
            Event::Step {
                scenario,
                what,
                ok,
                elapsed,
            } => format!(
                "  {scenario}: {what} {} ({:.1} s)",
                if *ok { "ok" } else { "FAILED" },
                elapsed.as_secs_f64()
            ),
            Event::Finished {
                scenario,
                passed,
                elapsed,
            } => format!(
                "{scenario}: {} in {:.1} s",
                if *passed { "passed" } else { "FAILED" },
                elapsed.as_secs_f64()
            ),
        }
    }
}

type Sink = Box<dyn Fn(&Event) + Send>;

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Installs `sink` (replacing any other); `None` removes it.
pub fn set_sink(sink: Option<Sink>) {
    if let Ok(mut s) = SINK.lock() {
        *s = sink;
    }
}

/// Hands `event` to the sink, if one is installed.
pub fn emit(event: Event) {
    if let Ok(s) = SINK.lock()
        && let Some(sink) = s.as_ref()
    {
        sink(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn events_reach_the_installed_sink_as_lines() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        set_sink(Some(Box::new(move |e| s2.lock().unwrap().push(e.line()))));
        emit(Event::Step {
            scenario: "setup".into(),
            what: "install the package".into(),
            ok: true,
            elapsed: Duration::from_millis(12_340),
        });
        emit(Event::Finished {
            scenario: "load-unload".into(),
            passed: false,
            elapsed: Duration::from_millis(2_060),
        });
        set_sink(None);
        emit(Event::Finished {
            scenario: "dropped".into(),
            passed: true,
            elapsed: Duration::ZERO,
        });
        // Other tests of this crate may emit at the same time: keep ours.
        let ours: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains("install the package ok")
                    || l.starts_with("load-unload")
                    || l.starts_with("dropped")
            })
            .cloned()
            .collect();
        assert_eq!(
            ours,
            vec![
                "  setup: install the package ok (12.3 s)".to_string(),
                "load-unload: FAILED in 2.1 s".to_string()
            ]
        );
    }
}
