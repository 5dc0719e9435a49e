//! What a run measured and found: one result per trial, summed up per fault in a table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::load::{status_label, Attempt, Kind, Totals};
use super::plan::Fault;
use super::verify::{Comparison, Findings};

/// How the load fared in a fault's window: from the fault being applied to it being undone.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Command requests (retries included) sent in the window.
    pub sent: usize,
    /// Of those, answered 2xx.
    pub ok: usize,
    /// The others by status (or pseudo status of a request without answer).
    pub failed: BTreeMap<u16, usize>,
    /// Read-your-writes reads sent in the window, and of those answered at their version.
    pub reads_sent: usize,
    pub reads_ok: usize,
    /// The longest time without a 2xx command answer, from the fault on, until the first 2xx
    /// after the fault was undone (or until measured, if none came).
    pub longest_gap: Duration,
    /// From the fault being undone to the first read-your-writes read sent after that which
    /// succeeded; `None` if none did.
    pub first_read_after_undo: Option<Duration>,
}

impl Window {
    /// The failed requests by status, e.g. `502 x1, 503 x4, timeout x2`; `-` when none.
    pub fn failed_text(&self) -> String {
        if self.failed.is_empty() {
            return "-".into();
        }
        self.failed
            .iter()
            .map(|(status, n)| format!("{} x{n}", status_label(*status)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn measure(attempts: &[Attempt], fault: Instant, undone: Instant, now: Instant) -> Self {
        let commands = attempts.iter().filter(|a| a.kind == Kind::Command);
        let in_window: Vec<&Attempt> = commands
            .clone()
            .filter(|a| a.sent >= fault && a.sent <= undone)
            .collect();
        let mut ok_times: Vec<Instant> = commands
            .filter(|a| a.ok && a.answered >= fault)
            .map(|a| a.answered)
            .collect();
        ok_times.sort();
        let end = ok_times
            .iter()
            .copied()
            .find(|t| *t >= undone)
            .unwrap_or(now);
        let mut longest_gap = Duration::ZERO;
        let mut previous = fault;
        for t in ok_times
            .iter()
            .copied()
            .take_while(|t| *t <= end)
            .chain([end])
        {
            longest_gap = longest_gap.max(t.saturating_duration_since(previous));
            previous = t;
        }
        let first_read_after_undo = attempts
            .iter()
            .filter(|a| a.kind == Kind::Read && a.ok && a.sent >= undone)
            .map(|a| a.answered.saturating_duration_since(undone))
            .min();
        let reads: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.kind == Kind::Read && a.sent >= fault && a.sent <= undone)
            .collect();
        let mut failed = BTreeMap::new();
        for a in in_window.iter().filter(|a| !a.ok) {
            *failed.entry(a.status).or_default() += 1;
        }
        Self {
            sent: in_window.len(),
            ok: in_window.iter().filter(|a| a.ok).count(),
            failed,
            reads_sent: reads.len(),
            reads_ok: reads.iter().filter(|a| a.ok).count(),
            longest_gap,
            first_read_after_undo,
        }
    }
}

/// One trial of one fault.
#[derive(Debug, Clone)]
pub struct TrialResult {
    pub fault: Fault,
    /// 1-based.
    pub trial: usize,
    /// What was done, e.g. `kill -9 kafka-2 (leader of 4/6 partitions), start`.
    pub action: String,
    /// How long the fault lasted (applied to undone).
    pub duration: Duration,
    pub window: Window,
    pub findings: Findings,
    /// Answers no correct system gives, during this trial.
    pub wrong_answers: Vec<String>,
    /// Why requests of this trial got no answer (the first few).
    pub transport_errors: Vec<String>,
    /// A part control step that failed (the run goes on: the next trial restarts what is down).
    pub error: Option<String>,
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub trials: Vec<TrialResult>,
    /// The check of every order of the run once the load stopped.
    pub final_findings: Option<Findings>,
    pub comparison: Option<Comparison>,
    pub totals: Totals,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// Wrong answers outside any trial's window.
    pub wrong_answers: Vec<String>,
    /// Records of the events topic read by the suite, and those that were not envelopes.
    pub topic_records: usize,
    pub undecodable: Vec<String>,
    pub elapsed: Duration,
}

/// The failed requests of several trials by status.
fn report_failed(trials: &[&TrialResult]) -> String {
    let mut all = Window::default();
    for t in trials {
        for (status, n) in &t.window.failed {
            *all.failed.entry(*status).or_default() += n;
        }
    }
    if all.failed.is_empty() {
        String::new()
    } else {
        all.failed_text()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Report {
    /// Acknowledged commands lost, over every check.
    pub fn lost(&self) -> usize {
        self.trials
            .iter()
            .map(|t| t.findings.lost_commands)
            .chain(self.final_findings.iter().map(|f| f.lost_commands))
            .sum()
    }

    /// Views that differ: orders whose view is not what its version must show, over every
    /// check, plus the tables that differ from the rebuild.
    pub fn views_differing(&self) -> usize {
        self.trials
            .iter()
            .map(|t| t.findings.views_differing)
            .chain(self.final_findings.iter().map(|f| f.views_differing))
            .sum::<usize>()
            + self
                .comparison
                .as_ref()
                .map_or(0, |c| c.differing_tables.len())
    }

    /// Every check that did not pass, one line each; empty when the run passed.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(why) = &self.aborted {
            failures.push(format!("the run stopped early: {why}"));
        }
        for t in &self.trials {
            let name = format!("{} trial {}", t.fault, t.trial);
            if let Some(e) = &t.error {
                failures.push(format!("{name}: {e}"));
            }
            if t.window.first_read_after_undo.is_none() {
                failures.push(format!(
                    "{name}: no read-your-writes read succeeded after the fault was undone"
                ));
            }
            if !t.findings.clean() {
                failures.push(format!(
                    "{name}: {} acknowledged commands lost, {} views differing, {} topic anomalies",
                    t.findings.lost_commands,
                    t.findings.views_differing,
                    t.findings.topic_anomalies
                ));
            }
            for w in &t.wrong_answers {
                failures.push(format!("{name}: wrong answer: {w}"));
            }
        }
        for w in &self.wrong_answers {
            failures.push(format!("wrong answer: {w}"));
        }
        for u in &self.undecodable {
            failures.push(format!(
                "a record of the events topic is not an envelope: {u}"
            ));
        }
        match &self.final_findings {
            Some(f) if !f.clean() => failures.push(format!(
                "final check: {} acknowledged commands lost, {} views differing, {} topic anomalies",
                f.lost_commands, f.views_differing, f.topic_anomalies
            )),
            Some(_) => {}
            None => failures.push("no final check of every order".into()),
        }
        if let Some(c) = &self.comparison {
            if !c.differing_tables.is_empty() {
                failures.push(format!(
                    "the views differ from a rebuild of the topic: {} (rebuild kept in keyspace {})",
                    c.differing_tables.join(", "),
                    c.kept_keyspace.as_deref().unwrap_or("?")
                ));
            }
        }
        failures
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// The report as text: the table, one row per fault, then the final checks and failures.
    pub fn render(&self) -> String {
        let mut rows = vec![vec![
            "fault".to_string(),
            "trials".into(),
            "sent during".into(),
            "2xx during".into(),
            "non-2xx during".into(),
            "RYW reads ok during".into(),
            "longest gap".into(),
            "first RYW after undo (max)".into(),
            "lost".into(),
            "views differing".into(),
        ]];
        let mut faults: Vec<Fault> = Vec::new();
        for t in &self.trials {
            if !faults.contains(&t.fault) {
                faults.push(t.fault);
            }
        }
        for fault in faults {
            let trials: Vec<&TrialResult> =
                self.trials.iter().filter(|t| t.fault == fault).collect();
            let sent: usize = trials.iter().map(|t| t.window.sent).sum();
            let ok: usize = trials.iter().map(|t| t.window.ok).sum();
            let gap = trials
                .iter()
                .map(|t| t.window.longest_gap)
                .max()
                .unwrap_or_default();
            let recovered = trials
                .iter()
                .map(|t| t.window.first_read_after_undo)
                .collect::<Option<Vec<_>>>()
                .map(|all| all.into_iter().max().unwrap_or_default());
            let failed = report_failed(&trials);
            let reads_sent: usize = trials.iter().map(|t| t.window.reads_sent).sum();
            let reads_ok: usize = trials.iter().map(|t| t.window.reads_ok).sum();
            let lost: usize = trials.iter().map(|t| t.findings.lost_commands).sum();
            let differing: usize = trials.iter().map(|t| t.findings.views_differing).sum();
            rows.push(vec![
                fault.to_string(),
                trials.len().to_string(),
                sent.to_string(),
                if sent == 0 {
                    "-".into()
                } else {
                    format!("{:.1} %", 100.0 * ok as f64 / sent as f64)
                },
                if failed.is_empty() {
                    "-".into()
                } else {
                    failed
                },
                format!("{reads_ok}/{reads_sent}"),
                secs(gap),
                recovered.map_or("never".into(), secs),
                lost.to_string(),
                differing.to_string(),
            ]);
        }
        if let Some(f) = &self.final_findings {
            let differing = f.views_differing
                + self
                    .comparison
                    .as_ref()
                    .map_or(0, |c| c.differing_tables.len());
            let mut row = vec!["final (every order)".to_string()];
            row.extend(std::iter::repeat_n("-".to_string(), rows[0].len() - 3));
            row.push(f.lost_commands.to_string());
            row.push(differing.to_string());
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let line = |row: &Vec<String>| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    if i == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = String::new();
        out.push_str(&line(&rows[0]));
        out.push('\n');
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w.saturating_sub(1)))
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &rows[1..] {
            out.push_str(&line(row));
            out.push('\n');
        }
        let t = &self.totals;
        out.push_str(&format!(
            "\nload: {} orders, {} command requests ({:.1} % 2xx), {} commands acknowledged, \
             {} commands given up after the retry bound, {} read-your-writes reads timed out; \
             run took {}\n",
            t.orders,
            t.commands_sent,
            if t.commands_sent == 0 {
                0.0
            } else {
                100.0 * t.commands_ok as f64 / t.commands_sent as f64
            },
            t.acked_commands,
            t.gave_up,
            t.read_timeouts,
            secs(self.elapsed),
        ));
        if let Some(f) = &self.final_findings {
            out.push_str(&format!(
                "final check: {} orders read through query-api, {} checked in the topic \
                 ({} records): {} lost, {} views differing, {} topic anomalies\n",
                f.orders_read,
                f.orders_in_topic,
                self.topic_records,
                f.lost_commands,
                f.views_differing,
                f.topic_anomalies
            ));
        }
        match &self.comparison {
            Some(c) => {
                out.push_str(&format!(
                    "views vs rebuild ({} records): live {:016x} ({} rows), rebuild {:016x} ({} rows): {}\n",
                    c.records,
                    c.live.hash,
                    c.live.rows,
                    c.rebuild.hash,
                    c.rebuild.rows,
                    if c.differing_tables.is_empty() {
                        "equal".to_string()
                    } else {
                        format!("DIFFERENT: {}", c.differing_tables.join(", "))
                    }
                ));
                for ((name, live, rows), (_, rebuilt, rebuilt_rows)) in
                    c.live.tables.iter().zip(&c.rebuild.tables)
                {
                    out.push_str(&format!(
                        "  {name:<20} live {live:016x} ({rows} rows)  rebuild {rebuilt:016x} ({rebuilt_rows} rows)\n"
                    ));
                }
            }
            None => out.push_str("views vs rebuild: not compared\n"),
        }
        let failures = self.failures();
        if failures.is_empty() {
            out.push_str("\nevery check passed\n");
        } else {
            out.push_str(&format!("\n{} checks failed:\n", failures.len()));
            for f in failures.iter().take(50) {
                out.push_str(&format!("  - {f}\n"));
            }
            let details: Vec<&String> = self
                .trials
                .iter()
                .flat_map(|t| &t.findings.details)
                .chain(self.final_findings.iter().flat_map(|f| &f.details))
                .collect();
            if !details.is_empty() {
                out.push_str("details:\n");
                for d in details.iter().take(50) {
                    out.push_str(&format!("  - {d}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(kind: Kind, sent: Instant, after_ms: u64, ok: bool) -> Attempt {
        Attempt {
            kind,
            sent,
            answered: sent + Duration::from_millis(after_ms),
            status: if ok { 200 } else { 503 },
            ok,
        }
    }

    #[test]
    fn the_longest_gap_runs_until_the_first_success_after_the_undo() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let attempts = vec![
            attempt(Kind::Command, at(0), 100, true),
            attempt(Kind::Command, at(200), 100, false),
            attempt(Kind::Command, at(400), 100, true),
            // Undone at 1000; the first 2xx after it comes at 3000.
            attempt(Kind::Command, at(2900), 100, true),
            attempt(Kind::Read, at(1500), 100, false),
            attempt(Kind::Read, at(3000), 50, true),
        ];
        let w = Window::measure(&attempts, at(50), at(1000), at(5000));
        assert_eq!(w.sent, 2);
        assert_eq!(w.ok, 1);
        assert_eq!(w.longest_gap, Duration::from_millis(2500));
        assert_eq!(w.first_read_after_undo, Some(Duration::from_millis(2050)));
    }
}
