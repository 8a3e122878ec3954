//! Reports shared by every backend: the per-scenario [`ScenarioReport`] (defined
//! with the emulator's runner, which produced it first) and the JUnit writer.

pub use crate::emu::runner::{ScenarioReport, StepReport};

/// JUnit XML with one test case per report; `backend` names the suite and class.
pub fn junit(backend: &str, reports: &[ScenarioReport]) -> String {
    fn esc(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '<' => "&lt;".to_string(),
                '>' => "&gt;".to_string(),
                '&' => "&amp;".to_string(),
                '"' => "&quot;".to_string(),
                c if (c as u32) < 0x20 && c != '\n' && c != '\t' => format!("&#{};", c as u32),
                c => c.to_string(),
            })
            .collect()
    }
    let failures = reports.iter().filter(|r| !r.passed).count();
    let total: f64 = reports.iter().map(|r| r.duration.as_secs_f64()).sum();
    let backend = esc(backend);
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"vm-test {backend}\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n",
        reports.len()
    );
    for r in reports {
        s.push_str(&format!(
            "  <testcase classname=\"{backend}\" name=\"{} [{}]\" time=\"{:.3}\">\n",
            esc(&r.scenario),
            esc(&r.kexts.join(", ")),
            r.duration.as_secs_f64()
        ));
        if !r.passed {
            s.push_str(&format!(
                "    <failure message=\"{}\">{}</failure>\n",
                esc(r.failures.first().map(String::as_str).unwrap_or("failed")),
                esc(&r.failures.join("\n"))
            ));
        }
        s.push_str(&format!(
            "    <system-out>{}</system-out>\n  </testcase>\n",
            esc(&r.render())
        ));
    }
    s.push_str("</testsuite>\n");
    s
}
