//! The status page (`GET /status` on query-api), rendered by a real headless Chromium over a real
//! run: command-api in process, the projector as a process of its own (killed and started again
//! at the same address, so lag builds up and drains), query-api in process sampling both services'
//! `/metrics` and its own store. The test reads the DOM the page's script built and keeps a
//! screenshot in `target/test-artifacts/status.png` (and the DOM beside it, `status.html`).
//!
//! Chromium comes from Debian's `chromium` package through `infra/chromium`, which installs it
//! when missing if `CI=true` or `CQRS_INSTALL=1`; without it the test fails and says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    client, eventually, settings_with_fresh_topic, CommandApi, Keyspace, Projector, QueryApi,
};

/// How long Chromium lets the page run (virtual time: it waits for `status.json` to arrive).
const VIRTUAL_TIME_BUDGET_MS: u64 = 8_000;
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `/status.json`, fetched without any credentials.
async fn report(query: &QueryApi) -> anyhow::Result<Value> {
    let r = client().get(query.url("/status.json")).send().await?;
    anyhow::ensure!(r.status() == 200, "/status.json answered {}", r.status());
    Ok(r.json().await?)
}

fn projection<'a>(report: &'a Value, name: &str, generation: i64) -> Option<&'a Value> {
    report["projections"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name && p["generation"] == generation && p["serving"] == true)
}

/// `target/test-artifacts`, created.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `infra/chromium --headless=new … <args>`; its standard output.
async fn chromium(args: &[String]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/chromium");
    let profile = std::env::temp_dir().join(format!("status-chromium-{}", uuid::Uuid::now_v7()));
    let mut cmd = tokio::process::Command::new(&script);
    cmd.arg("--headless=new")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .arg("--no-first-run")
        .arg("--hide-scrollbars")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CHROMIUM_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let _ = std::fs::remove_dir_all(&profile);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "infra/chromium {args:?} failed ({}); without Chromium, install it (apt-get install \
         chromium) or run with CQRS_INSTALL=1:\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attributes of an HTML start tag (`<svg a="1" b="x">` → {a: 1, b: x}).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        attrs.insert(name, rest[value_start..value_start + len].to_string());
        rest = &rest[value_start + len + 1..];
    }
    attrs
}

/// One drawn line of a plot.
#[derive(Debug)]
struct Line {
    series: String,
    points: usize,
    max: f64,
}

/// Every `<svg data-plot=…>` of the DOM: its polylines, and the number of points it drew.
fn plots(dom: &str) -> BTreeMap<String, (usize, Vec<Line>)> {
    let mut plots = BTreeMap::new();
    for (start, _) in dom.match_indices("<svg") {
        let Some(tag_end) = dom[start..].find('>') else {
            continue;
        };
        let attrs = attributes(&dom[start..start + tag_end]);
        let Some(id) = attrs.get("data-plot") else {
            continue;
        };
        let body_end = dom[start..].find("</svg>").unwrap_or(dom.len() - start);
        let body = &dom[start..start + body_end];
        let lines = body
            .match_indices("<polyline")
            .filter_map(|(i, _)| {
                let end = body[i..].find('>')?;
                let a = attributes(&body[i..i + end]);
                Some(Line {
                    series: a.get("data-series")?.clone(),
                    points: a.get("data-points")?.parse().ok()?,
                    max: a.get("data-max")?.parse().ok()?,
                })
            })
            .collect();
        let points = attrs
            .get("data-points")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        plots.insert(id.clone(), (points, lines));
    }
    plots
}

/// The body's `data-…` attributes.
fn body_attributes(dom: &str) -> BTreeMap<String, String> {
    let start = dom.find("<body").expect("a body");
    let end = dom[start..].find('>').expect("the body tag's end");
    attributes(&dom[start..start + end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_plots_lag_and_command_rates_of_a_real_run() {
    let began = Instant::now();
    let mut settings = settings_with_fresh_topic("status").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let commands = CommandApi::spawn(settings.clone()).await.unwrap();
    let projector_addr = free_addr();
    settings.query_api.status_sources = format!(
        "http://{}/metrics, http://{projector_addr}/metrics",
        commands.addr
    );
    // A fixed address: the projector started again after its kill is the same /metrics source.
    let projector_addr_text = projector_addr.to_string();
    let projector_env = [("APP_PROJECTOR__ADDR", projector_addr_text.as_str())];
    let mut projector = Projector::spawn_process(&settings, &projector_env)
        .await
        .unwrap();
    let query = QueryApi::spawn(&settings).await.unwrap();
    query
        .wait_read_models(Duration::from_secs(60))
        .await
        .unwrap();
    let (generation, _) = ks.generations("orders").await.unwrap().expect("registered");
    let generation = i64::from(generation);

    // The page and its data are open like /metrics, while /v1 wants a token.
    let open = client();
    let page = open.get(query.url("/status")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("status.json"));
    if settings.auth.enabled {
        let refused = open.get(query.url("/v1/projections")).send().await.unwrap();
        assert_eq!(refused.status(), 401, "/v1 without a token");
    }

    // 1. Orders through a running projector: commands per second, events applied.
    for _ in 0..20 {
        commands.place_order().await.unwrap();
    }
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();

    // 2. The projector killed: the next orders wait in Kafka, and a sample sees the lag.
    projector.kill();
    for _ in 0..30 {
        commands.place_order().await.unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "a status sample with orders lagging",
        || async {
            let r = report(&query).await?;
            let lag = projection(&r, "orders", generation).and_then(|p| p["lag"].as_i64());
            Ok((lag >= Some(1)).then_some(()))
        },
    )
    .await
    .unwrap();

    // 3. Started again at the same address: it catches up, and a sample sees that too.
    let mut projector = Projector::spawn_process(&settings, &projector_env)
        .await
        .unwrap();
    ks.drain(&settings, Duration::from_secs(90)).await.unwrap();
    let last = eventually(
        Duration::from_secs(30),
        "a status sample with no lag and both sources up",
        || async {
            let r = report(&query).await?;
            let caught_up = ["orders", "order_history"].iter().all(|name| {
                projection(&r, name, generation).and_then(|p| p["lag"].as_i64()) == Some(0)
            });
            let sources_up = r["sources"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["up"] == true));
            Ok((caught_up && sources_up).then_some(r))
        },
    )
    .await
    .unwrap();
    assert!(
        last["commands"]["totals"]["accepted"].as_f64() >= Some(50.0),
        "{}",
        last["commands"]
    );

    // 4. The page in a real browser.
    let url = query.url("/status");
    let dom = chromium(&[
        format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
        "--dump-dom".into(),
        url.clone(),
    ])
    .await;
    let artifacts = artifacts_dir();
    std::fs::write(artifacts.join("status.html"), &dom).unwrap();
    let screenshot = artifacts.join("status.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&[
        format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1280,1600".into(),
        url,
    ])
    .await;

    let body = body_attributes(&dom);
    assert_eq!(
        body.get("data-state").map(String::as_str),
        Some("ok"),
        "the page did not render a report: {body:?}"
    );
    let samples: usize = body["data-samples"].parse().unwrap();
    assert!(samples >= 3, "{samples} samples");

    let plots = plots(&dom);
    let plot = |id: &str| {
        plots
            .get(id)
            .unwrap_or_else(|| panic!("no plot {id} in the page; plots: {:?}", plots.keys()))
    };
    let points = |lines: &[Line]| lines.iter().map(|l| l.points).sum::<usize>();
    let max = |lines: &[Line]| lines.iter().map(|l| l.max).fold(0.0, f64::max);

    // Lag of both projections over time, per partition: the kill's backlog, then back to zero.
    for name in ["orders", "order_history"] {
        let (drawn, lines) = plot(&format!("lag:{name}:g{generation}"));
        assert!(*drawn > 0 && points(lines) > 0, "{name} lag: {lines:?}");
        assert!(
            lines.iter().any(|l| l.series.starts_with('p')),
            "{name} lag series are partitions: {lines:?}"
        );
        assert!(
            max(lines) >= 1.0,
            "{name} lag never seen above 0: {lines:?}"
        );
        let (bars, _) = plot(&format!("lag-now:{name}:g{generation}"));
        assert_eq!(*bars, 3, "one bar per partition of the topic");
    }
    let (_, applied) = plot(&format!("applied:orders:g{generation}"));
    assert!(max(applied) > 0.0, "events applied per second: {applied:?}");
    let (drawn, rate) = plot("commands");
    assert!(*drawn > 0, "commands per second: {rate:?}");
    let all: Vec<&Line> = rate.iter().filter(|l| l.series == "all").collect();
    assert!(
        all.iter().map(|l| l.points).sum::<usize>() > 0 && all.iter().any(|l| l.max > 0.0),
        "commands per second: {rate:?}"
    );
    let (drawn, _) = plot("oldest-intent");
    assert!(*drawn > 0, "the oldest unpublished intent is sampled");
    assert_eq!(
        dom.matches("data-up=\"true\"").count(),
        2,
        "both metrics sources shown up"
    );

    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a screenshot of {} bytes",
        png.len()
    );
    eprintln!(
        "status page: {samples} samples, screenshot {} ({} bytes), DOM {}; test took {:.1} s",
        screenshot.display(),
        png.len(),
        artifacts.join("status.html").display(),
        began.elapsed().as_secs_f64()
    );

    query.stop().await.unwrap();
    commands.stop().await.unwrap();
    projector.kill();
    ks.drop_keyspace().await.unwrap();
}
