//! How the benchmark measures: closed-loop throughput at a fixed concurrency, open-loop latency at
//! a fixed arrival rate (latency counted from the *scheduled* send time, so a slow answer delays
//! no later request and hides nothing: no coordinated omission), CPU seconds of every process that
//! takes part (`/proc/<pid>/stat`), and resident memory (`/proc/<pid>/status`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// One operation: `(sequence number within its worker, worker index)`.
pub type OpFn = Arc<dyn Fn(u64, usize) -> BoxFuture<anyhow::Result<()>> + Send + Sync>;

pub fn op<F, Fut>(f: F) -> OpFn
where
    F: Fn(u64, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |seq, worker| Box::pin(f(seq, worker)))
}

/// Latencies in microseconds, 1 µs .. 120 s, 3 significant digits.
#[allow(clippy::expect_used)]
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

pub fn record(hist: &Mutex<Histogram<u64>>, d: Duration) {
    let micros = (d.as_micros() as u64).clamp(1, 120_000_000);
    if let Ok(mut h) = hist.lock() {
        let _ = h.record(micros);
    }
}

/// Counts and latencies of one run, shared by its workers.
#[derive(Clone)]
struct Tally {
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
            hist: Arc::new(Mutex::new(histogram())),
            first_error: Arc::new(Mutex::new(None)),
        }
    }

    fn success(&self, latency: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        record(&self.hist, latency);
    }

    /// A failed operation; in open loop it still cost the client `latency`, so it is recorded.
    fn failure(&self, latency: Option<Duration>, message: impl FnOnce() -> String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = latency {
            record(&self.hist, latency);
        }
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(message());
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn outcome(&self, secs: f64, cpu: CpuDelta) -> Outcome {
        Outcome {
            ok: self.ok(),
            errors: self.errors(),
            secs,
            hist: self
                .hist
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| histogram()),
            cpu,
            first_error: self.first_error.lock().ok().and_then(|e| e.clone()),
            all_ops: 0,
        }
    }
}

/// What one measured run produced.
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
    pub cpu: CpuDelta,
    pub first_error: Option<String>,
    /// Operations completed over the whole loop, warm-up and drain included (closed loop only):
    /// what a count taken before and after the loop divides by.
    pub all_ops: u64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
    /// Quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// CPU milliseconds per successful operation spent by the processes labelled `labels`.
    pub fn cpu_ms_per_op(&self, labels: &[&str]) -> Option<f64> {
        if self.ok == 0 {
            return None;
        }
        let total: f64 = labels.iter().filter_map(|l| self.cpu.secs.get(*l)).sum();
        labels
            .iter()
            .any(|l| self.cpu.secs.contains_key(*l))
            .then(|| total * 1000.0 / self.ok as f64)
    }
}

fn bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>34} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Closed loop: `concurrency` workers issue operations back to back; a warm-up is run first and
/// not counted. Latency here is service time (closed loops hide queueing); use it only as a hint.
pub async fn closed_loop(
    label: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    procs: &Procs,
    op: OpFn,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let tally = Tally::new();
    let all_ops = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (stop, measuring, tally, op, all_ops) = (
            stop.clone(),
            measuring.clone(),
            tally.clone(),
            op.clone(),
            all_ops.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(15), op(seq, worker)).await;
                seq += 1;
                all_ops.fetch_add(1, Ordering::Relaxed);
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(Ok(())) => tally.success(started.elapsed()),
                    Ok(Err(e)) => tally.failure(None, || format!("{e:#}")),
                    Err(_) => tally.failure(None, || "timed out after 15 s".into()),
                }
            }
        }));
    }
    let pb = bar(
        &format!("{label} c={concurrency}"),
        duration.as_millis() as u64,
    );
    pb.set_message("warming up");
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu0 = procs.snapshot();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(200).min(duration.saturating_sub(t0.elapsed())))
            .await;
        let n = tally.ok();
        pb.set_position(t0.elapsed().as_millis() as u64);
        pb.set_message(format!(
            "{n} ok, {} err, {:.0}/s",
            tally.errors(),
            n as f64 / t0.elapsed().as_secs_f64().max(0.001)
        ));
    }
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procs.snapshot().since(&cpu0, secs);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(20), w).await;
    }
    pb.finish_and_clear();
    let mut out = tally.outcome(secs, cpu);
    out.all_ops = all_ops.load(Ordering::Relaxed);
    eprintln!(
        "  {label:<34} c={concurrency:<4} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}{}",
        out.rate(),
        out.ms(0.5),
        out.ms(0.99),
        out.errors,
        out.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    out
}

/// Open loop: operation `i` is due at `start + i / rate`, is started then whatever happened to the
/// others, and its latency runs from that due time to its completion.
pub async fn open_loop(
    label: &str,
    rate: f64,
    duration: Duration,
    procs: &Procs,
    op: OpFn,
) -> Outcome {
    let rate = rate.max(1.0);
    let n = (rate * duration.as_secs_f64()).max(1.0) as u64;
    let tally = Tally::new();
    let pb = bar(&format!("{label} @{rate:.0}/s"), n);
    let cpu0 = procs.snapshot();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (tally_t, op) = (tally.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let tally = tally_t;
            let result = tokio::time::timeout(Duration::from_secs(15), op(i, 0)).await;
            let latency = tokio::time::Instant::now().saturating_duration_since(due);
            // A failure still took the client this long: it counts in the latency too.
            match result {
                Ok(Ok(())) => tally.success(latency),
                Ok(Err(e)) => tally.failure(Some(latency), || format!("{e:#}")),
                Err(_) => tally.failure(Some(latency), || "timed out after 15 s".into()),
            }
        }));
        if i % 64 == 0 {
            pb.set_position(i);
            pb.set_message(format!("{} ok, {} err", tally.ok(), tally.errors()));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procs.snapshot().since(&cpu0, secs);
    pb.finish_and_clear();
    let out = tally.outcome(secs, cpu);
    eprintln!(
        "  {label:<34} @{rate:<6.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  errors {}{}",
        out.ms(0.5),
        out.ms(0.99),
        out.ms(0.999),
        out.errors,
        out.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    out
}

// ------------------------------------------------------------------------------------------------
// Processes: CPU seconds and resident memory
// ------------------------------------------------------------------------------------------------

/// The processes whose CPU time a run accounts for, by label.
#[derive(Clone, Default)]
pub struct Procs {
    inner: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Labels whose CPU is that of the whole process tree (PostgreSQL: the postmaster and one
    /// backend per connection), the reaped children included.
    trees: Arc<Mutex<std::collections::BTreeSet<String>>>,
    peak_rss_kib: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// CPU seconds spent by each labelled process over a window.
#[derive(Debug, Clone, Default)]
pub struct CpuDelta {
    pub secs: BTreeMap<String, f64>,
    /// Seconds of wall-clock time the deltas cover.
    #[allow(dead_code)]
    pub window: f64,
}

pub struct CpuSnapshot {
    secs: BTreeMap<String, f64>,
}

impl CpuSnapshot {
    pub fn since(&self, before: &CpuSnapshot, window: f64) -> CpuDelta {
        let secs = self
            .secs
            .iter()
            .filter_map(|(k, v)| before.secs.get(k).map(|b| (k.clone(), (v - b).max(0.0))))
            .collect();
        CpuDelta { secs, window }
    }
}

impl Procs {
    pub fn add(&self, label: &str, pid: u32) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(label.to_string(), pid);
        }
    }
    /// Account for `pid` and every process below it under `label`.
    pub fn add_tree(&self, label: &str, pid: u32) {
        self.add(label, pid);
        if let Ok(mut t) = self.trees.lock() {
            t.insert(label.to_string());
        }
    }
    pub fn snapshot(&self) -> CpuSnapshot {
        let pids = self.inner.lock().map(|m| m.clone()).unwrap_or_default();
        let trees = self.trees.lock().map(|t| t.clone()).unwrap_or_default();
        let secs = pids
            .into_iter()
            .filter_map(|(label, pid)| {
                if trees.contains(&label) {
                    tree_cpu_seconds(pid).map(|s| (label, s))
                } else {
                    cpu_seconds(pid).map(|s| (label, s))
                }
            })
            .collect();
        CpuSnapshot { secs }
    }
    /// Sample every process's resident memory, keeping the peak per label.
    pub fn sample_rss(&self) {
        let pids = self.inner.lock().map(|m| m.clone()).unwrap_or_default();
        if let Ok(mut peaks) = self.peak_rss_kib.lock() {
            for (label, pid) in pids {
                if let Some(kib) = rss_kib(pid) {
                    let peak = peaks.entry(label).or_insert(0);
                    *peak = (*peak).max(kib);
                }
            }
        }
    }
    pub fn peak_rss_mib(&self, label: &str) -> Option<f64> {
        self.peak_rss_kib
            .lock()
            .ok()?
            .get(label)
            .map(|k| *k as f64 / 1024.0)
    }
    /// Sample resident memory every 250 ms for as long as the process runs.
    pub fn spawn_rss_sampler(&self) -> tokio::task::JoinHandle<()> {
        let procs = self.clone();
        tokio::spawn(async move {
            loop {
                procs.sample_rss();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds of `root` and every live process below it, plus what `root`'s reaped children
/// spent (cutime + cstime).
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let field = |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let root_fields = stat_fields(root)?;
    let mut ticks = field(&root_fields, 11)?
        + field(&root_fields, 12)?
        + field(&root_fields, 13).unwrap_or(0.0)
        + field(&root_fields, 14).unwrap_or(0.0);
    let mut children: BTreeMap<u32, Vec<(u32, f64)>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Some(f) = stat_fields(pid) else { continue };
            let (Some(ppid), Some(u), Some(s)) = (
                f.get(1).and_then(|v| v.parse::<u32>().ok()),
                field(&f, 11),
                field(&f, 12),
            ) else {
                continue;
            };
            children.entry(ppid).or_default().push((pid, u + s));
        }
    }
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for (child, t) in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            ticks += t;
            stack.push(*child);
        }
    }
    Some(ticks / clock_ticks())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A cheap deterministic mix, to pick ids without a random-number crate.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::{cpu_seconds, tree_cpu_seconds};

    #[test]
    fn a_process_tree_counts_at_least_its_root_and_its_busy_child() {
        let me = std::process::id();
        // A child that burns CPU for a moment, then is reaped: its time moves to our cutime.
        let before = tree_cpu_seconds(me).expect("own stat");
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let after = tree_cpu_seconds(me).expect("own stat");
        let own = cpu_seconds(me).expect("own stat");
        assert!(after >= own, "tree {after} < own {own}");
        assert!(
            after > before,
            "the reaped child's CPU is not counted: {before} → {after}"
        );
    }
}
