//! The one table: measure, figure, baseline, ratio, target, met?; printed and written to
//! `target/bench/bench-<date>.md` and `target/bench/bench-latest.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Row {
    pub measure: String,
    pub figure: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn row(&mut self, measure: impl Into<String>, figure: impl Into<String>) -> &mut Row {
        self.rows.push(Row {
            measure: measure.into(),
            figure: figure.into(),
            baseline: String::new(),
            ratio: None,
            target: String::new(),
            met: None,
        });
        let last = self.rows.len() - 1;
        &mut self.rows[last]
    }

    pub fn not_measured(&mut self, measure: impl Into<String>, why: impl Into<String>) {
        self.row(measure, format!("not measured: {}", why.into()));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn markdown(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}\n");
        let _ = writeln!(
            out,
            "| measure | figure | baseline | ratio | target | met? |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|:---:|");
        for r in &self.rows {
            let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.measure, r.figure, r.baseline, ratio, r.target, met
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

impl Row {
    pub fn baseline(&mut self, b: impl Into<String>) -> &mut Self {
        self.baseline = b.into();
        self
    }
    pub fn ratio(&mut self, figure: f64, baseline: f64) -> &mut Self {
        if baseline > 0.0 && figure.is_finite() {
            self.ratio = Some(figure / baseline);
        }
        self
    }
    /// Target: ratio at least `min`.
    pub fn at_least(&mut self, min: f64) -> &mut Self {
        self.target = format!("≥ {min} × baseline");
        self.met = self.ratio.map(|r| r >= min);
        self
    }
    pub fn target(&mut self, text: impl Into<String>, met: Option<bool>) -> &mut Self {
        self.target = text.into();
        self.met = met;
        self
    }
}

pub fn rate(x: f64) -> String {
    format!("{x:.0}/s")
}

pub fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0} ms")
    } else if x >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

pub fn cpu(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 1.0 => format!("{v:.2} ms"),
        Some(v) => format!("{:.0} µs", v * 1000.0),
        None => "n/a".into(),
    }
}

/// The machine, for the report's header.
pub fn hardware() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|k| format!("{:.1} GiB RAM", k / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown RAM".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} × {cpu}, {ram}, Linux {kernel}")
}

pub fn out_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("bench")
}
