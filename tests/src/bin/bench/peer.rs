//! This system against the peer a user would otherwise pick: the `cqrs-es` crate with
//! `postgres-es` on PostgreSQL behind axum (`tests/peer/`, the shape of the cqrs-es demo). Same
//! machine, same load generator, same bodies: placing an order on a fresh aggregate, and the
//! lifecycle mix (place, add item × 2, pay, ship) on existing ones, at c = 1, 8, 32, alternating
//! between the two systems; then contention, 32 clients adding items to 4 orders.
//!
//! PostgreSQL (Debian's package) is started here in a data folder of its own under the dev state
//! (`initdb` + `pg_ctl` on a free port; as the `postgres` user when the bench runs as root, since
//! PostgreSQL refuses to run as root) and stopped at the end. The peer keeps its view inside the
//! command's request (a `GenericQuery` after the commit), so this system runs with its projector
//! and query-api up: both keep their views while the commands run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use uuid::Uuid;

use crate::measure::{closed_loop, op, OpFn, Outcome};
use crate::report::{cpu, ms, rate};
use crate::services::free_addr;
use crate::{section, workload, Bench};

/// CPU accounts of each system's processes (labels in `Procs`).
const OURS: &[&str] = &[
    "command-api",
    "cassandra",
    "kafka",
    "projector",
    "query-api",
];
const PEERS: &[&str] = &["peer", "postgres"];

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    section("the peer: cqrs-es + postgres-es on PostgreSQL, same load generator");
    b.ensure_projector().await?;
    let query = b.ensure_query().await?;
    let peer_bin = build_peer()?;
    let pg = Postgres::start(&b.id, &b.log_dir).await?;
    b.procs.add_tree("postgres", pg.pid);
    let peer = PeerService::start(&peer_bin, &pg.url(), &b.log_dir, &b.http).await;
    let result = match peer {
        Ok(peer) => {
            b.procs.add("peer", peer.pid());
            let result = compare(b, &peer.base, &query).await;
            peer.stop();
            result
        }
        Err(e) => Err(e),
    };
    pg.stop(b.cli.keep);
    result
}

async fn compare(b: &mut Bench, peer: &str, query: &str) -> anyhow::Result<()> {
    let ours = b.cmd_base();
    let concurrencies = b.plan.peer_concurrencies.clone();
    // Both warmed the same way before the first measured point (the peer's JIT-free stack needs
    // less, but its PostgreSQL caches and connection pool fill here).
    for base in [&ours, &peer.to_string()] {
        let _ = closed_loop(
            "warm-up: place (not measured)",
            8,
            Duration::ZERO,
            Duration::from_secs(2),
            &b.procs,
            place_op(b.http.clone(), base.clone()),
        )
        .await;
    }
    for (kind, what) in [
        ("place", "place an order on a fresh aggregate"),
        ("mix", "lifecycle mix (place, add item × 2, pay, ship)"),
    ] {
        for &c in &concurrencies {
            let make = |base: &str| match kind {
                "place" => place_op(b.http.clone(), base.to_string()),
                _ => workload::closed_commands_any(b.http.clone(), base.to_string(), c),
            };
            let ours_out = closed_loop(
                &format!("this system: {kind}"),
                c,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                make(&ours),
            )
            .await;
            let peer_out = closed_loop(
                &format!("peer: {kind}"),
                c,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                make(peer),
            )
            .await;
            let row = b
                .table
                .row(
                    format!(
                        "vs peer: commands/s, {what}, c={c} (p50 / p99; errors {} / {})",
                        ours_out.errors, peer_out.errors
                    ),
                    format!(
                        "{} ({} / {})",
                        rate(ours_out.rate()),
                        ms(ours_out.ms(0.5)),
                        ms(ours_out.ms(0.99))
                    ),
                )
                .baseline(format!(
                    "cqrs-es + Postgres {} ({} / {})",
                    rate(peer_out.rate()),
                    ms(peer_out.ms(0.5)),
                    ms(peer_out.ms(0.99))
                ))
                .ratio(ours_out.rate(), peer_out.rate());
            match (kind, c) {
                ("place", 32) => {
                    row.at_least(1.0);
                }
                ("place", 1) => {
                    row.at_least(0.6);
                }
                _ => {}
            }
            cpu_rows(b, what, c, &ours_out, &peer_out);
        }
    }
    contention(b, peer, query).await
}

fn cpu_rows(b: &mut Bench, what: &str, c: usize, ours: &Outcome, peer: &Outcome) {
    let per = |o: &Outcome, label: &str| o.cpu_ms_per_op(&[label]).unwrap_or(0.0);
    let ours_total = ours.cpu_ms_per_op(OURS);
    let peer_total = peer.cpu_ms_per_op(PEERS);
    let ours_parts = OURS
        .iter()
        .map(|l| format!("{l} {}", cpu(Some(per(ours, l)))))
        .collect::<Vec<_>>()
        .join(", ");
    let peer_parts = format!(
        "service {}, PostgreSQL {}",
        cpu(Some(per(peer, "peer"))),
        cpu(Some(per(peer, "postgres")))
    );
    b.table
        .row(
            format!("vs peer: CPU per command, {what}, c={c} ({ours_parts})"),
            cpu(ours_total),
        )
        .baseline(format!(
            "cqrs-es + Postgres {} ({peer_parts})",
            cpu(peer_total)
        ))
        .ratio(
            ours_total.unwrap_or(f64::NAN),
            peer_total.unwrap_or(f64::NAN),
        );
}

/// `POST /v1/orders` on a fresh order each time.
fn place_op(http: reqwest::Client, base: String) -> OpFn {
    op(move |_, _| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            workload::send_command(&http, &base, Uuid::now_v7(), 0).await?;
            Ok(())
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Contention
// ------------------------------------------------------------------------------------------------

const ORDERS: usize = 4;
const CLIENTS: usize = 32;
const SKUS: u64 = 50;

/// What the clients of one contention run saw.
struct Contended {
    ids: Vec<Uuid>,
    acknowledged: Vec<AtomicU64>,
    conflicts: AtomicU64,
    other: AtomicU64,
    first_other: Mutex<Option<String>>,
}

/// 32 clients adding items to 4 orders for the plan's contention time, on each system; then the
/// views read back and compared with what was acknowledged.
async fn contention(b: &mut Bench, peer: &str, query: &str) -> anyhow::Result<()> {
    let secs = b.plan.contention;
    section(&format!(
        "contention: {CLIENTS} clients adding items to {ORDERS} orders for {secs:?}, each system"
    ));
    let ours = b.cmd_base();
    let mut results = Vec::new();
    for (system, base, view_base) in [
        ("this system", ours.as_str(), query),
        ("cqrs-es + Postgres", peer, peer),
    ] {
        let run = Arc::new(Contended {
            ids: (0..ORDERS).map(|_| Uuid::now_v7()).collect(),
            acknowledged: (0..ORDERS).map(|_| AtomicU64::new(0)).collect(),
            conflicts: AtomicU64::new(0),
            other: AtomicU64::new(0),
            first_other: Mutex::new(None),
        });
        for id in &run.ids {
            workload::send_command(&b.http, base, *id, 0)
                .await
                .with_context(|| format!("{system}: placing a contended order"))?;
        }
        let outcome = closed_loop(
            &format!("{system}: contention"),
            CLIENTS,
            Duration::ZERO,
            secs,
            &b.procs,
            add_item_op(b.http.clone(), base.to_string(), run.clone()),
        )
        .await;
        let (lost, extra, expected) = compare_views(&b.http, view_base, &run).await?;
        results.push((system, outcome, run, lost, extra, expected));
    }
    let view_errors = peer_view_errors(&b.http, peer).await;
    let [ours, theirs] = results.as_slice() else {
        bail!("contention ran on {} systems", results.len());
    };
    let rate_of = |r: &(&str, Outcome, Arc<Contended>, u64, u64, u64)| r.1.rate();
    let share = |r: &(&str, Outcome, Arc<Contended>, u64, u64, u64)| {
        let conflicts = r.2.conflicts.load(Ordering::Relaxed) as f64;
        let all = r.1.ok as f64 + r.1.errors as f64;
        if all > 0.0 {
            100.0 * conflicts / all
        } else {
            0.0
        }
    };
    b.table
        .row(
            format!(
                "contention ({CLIENTS} clients, {ORDERS} orders, {:.0} s): acknowledged commands/s (other errors {} / {})",
                secs.as_secs_f64(),
                ours.2.other.load(Ordering::Relaxed),
                theirs.2.other.load(Ordering::Relaxed)
            ),
            rate(rate_of(ours)),
        )
        .baseline(format!("cqrs-es + Postgres {}", rate(rate_of(theirs))))
        .ratio(rate_of(ours), rate_of(theirs));
    b.table
        .row(
            "contention: share of requests answered 409 conflict",
            format!(
                "{:.1} % ({})",
                share(ours),
                ours.2.conflicts.load(Ordering::Relaxed)
            ),
        )
        .baseline(format!(
            "cqrs-es + Postgres {:.1} % ({})",
            share(theirs),
            theirs.2.conflicts.load(Ordering::Relaxed)
        ));
    let lost = |r: &(&str, Outcome, Arc<Contended>, u64, u64, u64)| {
        let pct = if r.5 > 0 {
            100.0 * r.3 as f64 / r.5 as f64
        } else {
            0.0
        };
        format!(
            "{} of {} ({pct:.1} %){}",
            r.3,
            r.5,
            if r.4 > 0 {
                format!(", {} applied but not acknowledged", r.4)
            } else {
                String::new()
            }
        )
    };
    b.table
        .row(
            "contention: view updates lost (units in the views vs acknowledged adds)",
            lost(ours),
        )
        .baseline(format!(
            "cqrs-es + Postgres {}{}",
            lost(theirs),
            view_errors
                .map(|n| format!("; its GenericQuery reported {n} failed view updates"))
                .unwrap_or_default()
        ))
        .target(
            "0 lost",
            Some(ours.3 == 0 && ours.2.other.load(Ordering::Relaxed) == 0),
        );
    for (system, _, run, ..) in &results {
        if let Ok(Some(e)) = run.first_other.lock().map(|e| e.clone()) {
            eprintln!("  {system}: first non-conflict error: {e}");
        }
    }
    Ok(())
}

fn add_item_op(http: reqwest::Client, base: String, run: Arc<Contended>) -> OpFn {
    op(move |seq, worker| {
        let (http, base, run) = (http.clone(), base.clone(), run.clone());
        async move {
            let i = worker % ORDERS;
            let id = run.ids[i];
            let body = serde_json::json!({
                "sku": format!("C-{}", seq % SKUS), "quantity": 1, "unit_price_cents": 100
            });
            let response = http
                .post(format!("{base}/v1/orders/{id}/items"))
                .json(&body)
                .send()
                .await;
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    run.other.fetch_add(1, Ordering::Relaxed);
                    bail!("sending: {e}");
                }
            };
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            match status {
                200 => {
                    run.acknowledged[i].fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                409 => {
                    run.conflicts.fetch_add(1, Ordering::Relaxed);
                    bail!("409 conflict")
                }
                _ => {
                    run.other.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = run.first_other.lock() {
                        first.get_or_insert_with(|| format!("{status}: {text}"));
                    }
                    bail!("{status}")
                }
            }
        }
    })
}

/// Units in each order's view against 1 (the placing's line) + the acknowledged adds, once the
/// views have settled (this system's projector catches up; the peer's view is written in the
/// request): (lost, applied but not acknowledged, expected), summed over the orders.
async fn compare_views(
    http: &reqwest::Client,
    base: &str,
    run: &Contended,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut lost, mut extra, mut expected_all) = (0, 0, 0);
    for (i, id) in run.ids.iter().enumerate() {
        let expected = 1 + run.acknowledged[i].load(Ordering::Relaxed);
        expected_all += expected;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut previous = None;
        let units = loop {
            let view: serde_json::Value = http
                .get(format!("{base}/v1/orders/{id}"))
                .send()
                .await?
                .json()
                .await?;
            let units: u64 = view["items"]
                .as_array()
                .map(|items| items.iter().filter_map(|l| l["quantity"].as_u64()).sum())
                .unwrap_or(0);
            // Settled: all there, or no change over the last second (the peer's view never
            // catches up: what it lost stays lost).
            if units >= expected || previous == Some(units) || Instant::now() > deadline {
                break units;
            }
            previous = Some(units);
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        lost += expected.saturating_sub(units);
        extra += units.saturating_sub(expected);
    }
    Ok((lost, extra, expected_all))
}

async fn peer_view_errors(http: &reqwest::Client, peer: &str) -> Option<u64> {
    let stats: serde_json::Value = http
        .get(format!("{peer}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    stats["view_update_errors"].as_u64()
}

// ------------------------------------------------------------------------------------------------
// The peer's processes
// ------------------------------------------------------------------------------------------------

/// Build `tests/peer` (its own Cargo project, outside the workspace) into the bench's own target
/// folder, release; a no-op when it is up to date. Its binary lands beside the bench's.
fn build_peer() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let profile_dir = exe.parent().context("the bench binary's folder")?;
    let target_dir = profile_dir.parent().context("the target folder")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/Cargo.toml");
    eprintln!(
        "  cargo build --release --manifest-path {} --target-dir {}",
        manifest.display(),
        target_dir.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .status()
        .context("running cargo to build the peer")?;
    if !status.success() {
        bail!("building the peer failed ({status})");
    }
    let bin = target_dir.join("release/bench-peer");
    if !bin.exists() {
        bail!("no peer binary at {}", bin.display());
    }
    Ok(bin)
}

/// A PostgreSQL server of the bench's own: its data folder, port and postmaster.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    pid: u32,
    /// `runuser -u postgres --` when the bench runs as root.
    as_user: Option<String>,
}

impl Postgres {
    /// `initdb` a fresh data folder under the dev state and `pg_ctl start` it on a free port.
    async fn start(id: &str, log_dir: &Path) -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let state = std::env::var("CQRS_DEV_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dev"));
        let data = state.join(format!("bench-postgres-{id}"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(log_dir)?;
        let as_user = running_as_root().then(|| "postgres".to_string());
        if let Some(user) = &as_user {
            let status = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(&data)
                .status()?;
            if !status.success() {
                bail!("chown {user} {}: {status}", data.display());
            }
        }
        let port = free_addr()?.port();
        let mut this = Self {
            bin,
            data,
            port,
            pid: 0,
            as_user,
        };
        this.run(
            "initdb",
            &[
                "-D",
                &this.data.display().to_string(),
                "-U",
                "bench",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )?;
        let log = this.data.join("postgres.log");
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
            this.data.display()
        );
        this.run(
            "pg_ctl",
            &[
                "-D",
                &this.data.display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        let pid_file = std::fs::read_to_string(this.data.join("postmaster.pid"))?;
        this.pid = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("no pid in postmaster.pid")?;
        eprintln!(
            "  PostgreSQL ({}) on 127.0.0.1:{port}, data {}, pid {}",
            this.bin.display(),
            this.data.display(),
            this.pid
        );
        Ok(this)
    }

    fn url(&self) -> String {
        format!("postgresql://bench@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(tool);
        let mut cmd = match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `pg_ctl stop -m fast`; the data folder goes too unless `keep`.
    fn stop(self, keep: bool) {
        let data = self.data.display().to_string();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]) {
            eprintln!("  stopping PostgreSQL: {e:#}");
        }
        if !keep {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}

/// The folder of `initdb` and `pg_ctl`: Debian's `/usr/lib/postgresql/<version>/bin` (the
/// newest), else wherever `initdb` is on the PATH.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    match which.as_ref().and_then(|p| p.parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir.to_path_buf()),
        _ => bail!(
            "PostgreSQL is not installed (initdb not found): apt-get install postgresql (infra/dev bench does it)"
        ),
    }
}

/// The peer service, a child process.
struct PeerService {
    base: String,
    child: Child,
}

impl PeerService {
    async fn start(
        bin: &Path,
        database_url: &str,
        log_dir: &Path,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let log = std::fs::File::create(log_dir.join("peer.log"))?;
        let child = Command::new(bin)
            .env("PEER_ADDR", addr.to_string())
            .env("PEER_DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut peer = Self {
            base: format!("http://{addr}"),
            child,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = peer.child.try_wait() {
                bail!(
                    "the peer exited with {status} (see {}/peer.log)",
                    log_dir.display()
                );
            }
            if let Ok(r) = http.get(format!("{}/healthz", peer.base)).send().await {
                if r.status().is_success() {
                    return Ok(peer);
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the peer did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerService {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
