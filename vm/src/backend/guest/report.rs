//! One scenario's report while it is being written: steps as they happen
//! (each also a progress event), failures, and the finish that decides
//! whether it passed.

use std::time::{Duration, Instant};

use super::GuestKext;
use crate::report::{ScenarioReport, StepReport};

/// One report under construction.
pub(super) struct Rep {
    pub(super) r: ScenarioReport,
    started: Instant,
}

impl Rep {
    pub(super) fn new(name: &str, kexts: &[GuestKext]) -> Rep {
        Rep {
            r: ScenarioReport {
                scenario: name.into(),
                kexts: kexts.iter().map(|k| k.bundle_id.clone()).collect(),
                passed: false,
                failures: Vec::new(),
                steps: Vec::new(),
                violations: Vec::new(),
                log: Vec::new(),
                fault: None,
                duration: Duration::ZERO,
                stderr: String::new(),
            },
            started: Instant::now(),
        }
    }
    pub(super) fn step(
        &mut self,
        what: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
    ) -> bool {
        let (what, detail) = (what.into(), detail.into());
        if !ok {
            self.r.failures.push(format!("{what}: {detail}"));
        }
        crate::progress::emit(crate::progress::Event::Step {
            scenario: self.r.scenario.clone(),
            what: what.clone(),
            ok,
            elapsed: self.started.elapsed(),
        });
        self.r.steps.push(StepReport { what, ok, detail });
        ok
    }
    pub(super) fn fail(&mut self, f: impl Into<String>) {
        self.r.failures.push(f.into());
    }
    pub(super) fn finish(mut self) -> ScenarioReport {
        self.r.passed = self.r.failures.is_empty();
        self.r.duration = self.started.elapsed();
        crate::progress::emit(crate::progress::Event::Finished {
            scenario: self.r.scenario.clone(),
            passed: self.r.passed,
            elapsed: self.r.duration,
        });
        self.r
    }
}

pub(super) fn not_run(name: &str, kexts: &[GuestKext], why: &str) -> ScenarioReport {
    let mut r = Rep::new(name, kexts);
    r.fail(format!("not run: {why}"));
    r.finish()
}
