//! Reads: raw CQL point reads against query-api with its cache off (and against the same raw read
//! behind bare axum, to tell HTTP's share), and a bare axum handler against query-api with its
//! cache on; closed loop, then open-loop latency.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use uuid::Uuid;

use crate::measure::{self, closed_loop, op, open_loop};
use crate::raw::{Raw, RawOps};
use crate::report::{cpu, ms, rate};
use crate::services::{Service, GENERATION_VAR};
use crate::stack::active_generation;
use crate::{finish, section, Bench};

pub async fn run(b: &mut Bench, raw: &Arc<Raw>, order_ids: Arc<Vec<Uuid>>) -> anyhow::Result<()> {
    section("reads: raw CQL point reads, query-api uncached, bare axum, query-api cached");
    let generation = active_generation(&b.session, b.ks(), "orders")
        .await
        .unwrap_or(1);
    // The query-api refresher picks a new generation up within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read_op = raw.read_op(generation, order_ids.clone()).await;
    let rc = b.plan.read_concurrency;
    let cached_base = b.ensure_query().await;
    match (read_op, cached_base) {
        (Ok(read_op), Ok(cached_base)) => {
            let before = crate::stack::cql_requests(&b.session, b.ks()).await;
            let raw_read = closed_loop(
                "raw CQL point read",
                rc,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                read_op.clone(),
            )
            .await;
            let after = crate::stack::cql_requests(&b.session, b.ks()).await;
            if let Some((total, parts)) =
                crate::stack::cql_requests_per_op(&before, &after, raw_read.all_ops)
            {
                b.table.row(
                    format!("CQL requests per read, raw read ({parts})"),
                    format!("{total:.2}"),
                );
            }
            let uncached_svc = Service::start(
                "query-api",
                &b.settings,
                &[("APP_QUERY_API__CACHE_TTL_MS", "0".to_string())],
                &b.log_dir,
                &b.http,
            )
            .await?;
            b.procs.add("query-api-uncached", uncached_svc.pid());
            let uncached_op = http_read_op(
                b.http.clone(),
                format!("http://{}", uncached_svc.addr),
                order_ids.clone(),
                order_ids.len(),
            );
            let before = crate::stack::cql_requests(&b.session, b.ks()).await;
            let uncached = closed_loop(
                "query-api reads, uncached",
                rc,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                uncached_op.clone(),
            )
            .await;
            let after = crate::stack::cql_requests(&b.session, b.ks()).await;
            if let Some((total, parts)) =
                crate::stack::cql_requests_per_op(&before, &after, uncached.all_ops)
            {
                b.table.row(
                    format!("CQL requests per read, uncached ({parts})"),
                    format!("{total:.2}"),
                );
            }
            // The same read behind bare axum: what HTTP costs on top of the raw read, so that
            // query-api's own overhead per uncached read can be told from it.
            let axum_cql_svc = Service::start(
                "axum-cql",
                &b.settings,
                &[(GENERATION_VAR, generation.to_string())],
                &b.log_dir,
                &b.http,
            )
            .await?;
            b.procs.add("axum-cql", axum_cql_svc.pid());
            let axum_cql = closed_loop(
                "bare axum + raw CQL read",
                rc,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                http_read_op(
                    b.http.clone(),
                    format!("http://{}", axum_cql_svc.addr),
                    order_ids.clone(),
                    order_ids.len(),
                ),
            )
            .await;
            axum_cql_svc.stop(Duration::from_secs(5)).await;
            let axum_svc = Service::start("axum", &b.settings, &[], &b.log_dir, &b.http).await?;
            b.procs.add("axum", axum_svc.pid());
            let axum_op = http_read_op(
                b.http.clone(),
                format!("http://{}", axum_svc.addr),
                order_ids.clone(),
                order_ids.len(),
            );
            let axum = closed_loop(
                "bare axum JSON handler",
                rc,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                axum_op.clone(),
            )
            .await;
            let hot = 64.min(order_ids.len());
            let cached_op =
                http_read_op(b.http.clone(), cached_base.clone(), order_ids.clone(), hot);
            let cached = closed_loop(
                "query-api reads, cached",
                rc,
                b.plan.warmup,
                b.plan.throughput,
                &b.procs,
                cached_op.clone(),
            )
            .await;

            // A quarter of the closed-loop rate: the load generator shares the 2 cores.
            let r_unc = (uncached.rate() / 4.0).max(1.0);
            let r_cac = (cached.rate() / 4.0).max(1.0);
            let lat_dur = b.plan.latency.min(Duration::from_secs(10));
            let raw_read_lat =
                open_loop("raw CQL point read", r_unc, lat_dur, &b.procs, read_op).await;
            let uncached_lat = open_loop(
                "query-api reads, uncached",
                r_unc,
                lat_dur,
                &b.procs,
                uncached_op,
            )
            .await;
            let axum_lat =
                open_loop("bare axum JSON handler", r_cac, lat_dur, &b.procs, axum_op).await;
            let cached_lat = open_loop(
                "query-api reads, cached",
                r_cac,
                lat_dur,
                &b.procs,
                cached_op,
            )
            .await;

            b.table
                .row(
                    format!(
                        "**query reads/s, uncached** (c={rc}; errors {})",
                        uncached.errors
                    ),
                    rate(uncached.rate()),
                )
                .baseline(format!("raw CQL point read {}", rate(raw_read.rate())))
                .ratio(uncached.rate(), raw_read.rate())
                .at_least(0.8);
            b.table
                .row(
                    format!(
                        "query reads/s, uncached, vs the raw read behind bare axum (c={rc}; errors {} / {})",
                        uncached.errors, axum_cql.errors
                    ),
                    rate(uncached.rate()),
                )
                .baseline(format!(
                    "bare axum + raw CQL read {}",
                    rate(axum_cql.rate())
                ))
                .ratio(uncached.rate(), axum_cql.rate());
            b.table
                .row(
                    "raw CQL read behind bare axum, vs the raw read alone (what HTTP costs)",
                    rate(axum_cql.rate()),
                )
                .baseline(format!("raw CQL point read {}", rate(raw_read.rate())))
                .ratio(axum_cql.rate(), raw_read.rate());
            b.table
                .row(
                    format!(
                        "**query reads/s, cached** (c={rc}, {hot} hot orders; errors {})",
                        cached.errors
                    ),
                    rate(cached.rate()),
                )
                .baseline(format!("bare axum {}", rate(axum.rate())))
                .ratio(cached.rate(), axum.rate())
                .at_least(0.5);
            b.table
                .row(
                    format!("query read latency p50 / p99, uncached @ {r_unc:.0}/s"),
                    format!(
                        "{} / {}",
                        ms(uncached_lat.ms(0.5)),
                        ms(uncached_lat.ms(0.99))
                    ),
                )
                .baseline(format!(
                    "raw CQL {} / {}",
                    ms(raw_read_lat.ms(0.5)),
                    ms(raw_read_lat.ms(0.99))
                ))
                .ratio(uncached_lat.ms(0.99), raw_read_lat.ms(0.99));
            b.table
                .row(
                    format!("query read latency p50 / p99, cached @ {r_cac:.0}/s"),
                    format!("{} / {}", ms(cached_lat.ms(0.5)), ms(cached_lat.ms(0.99))),
                )
                .baseline(format!(
                    "bare axum {} / {}",
                    ms(axum_lat.ms(0.5)),
                    ms(axum_lat.ms(0.99))
                ))
                .ratio(cached_lat.ms(0.99), axum_lat.ms(0.99));
            let unc_cpu = uncached.cpu_ms_per_op(&["query-api-uncached"]);
            let raw_cpu = raw_read.cpu_ms_per_op(&["bench"]);
            b.table
                .row("CPU per uncached read: query-api", cpu(unc_cpu))
                .baseline(format!("raw CQL read, client: {}", cpu(raw_cpu)))
                .ratio(unc_cpu.unwrap_or(f64::NAN), raw_cpu.unwrap_or(0.0));
            let ac_cpu = axum_cql.cpu_ms_per_op(&["axum-cql"]);
            b.table
                .row(
                    "CPU per uncached read: query-api, vs bare axum + raw CQL read",
                    cpu(unc_cpu),
                )
                .baseline(format!("bare axum + raw CQL read: {}", cpu(ac_cpu)))
                .ratio(unc_cpu.unwrap_or(f64::NAN), ac_cpu.unwrap_or(0.0));
            let cas_unc = uncached.cpu_ms_per_op(&["cassandra"]);
            let cas_raw = raw_read.cpu_ms_per_op(&["cassandra"]);
            b.table
                .row("CPU per uncached read: Cassandra", cpu(cas_unc))
                .baseline(format!("raw CQL read: {}", cpu(cas_raw)))
                .ratio(cas_unc.unwrap_or(f64::NAN), cas_raw.unwrap_or(0.0));
            let cac_cpu = cached.cpu_ms_per_op(&["query-api"]);
            let axum_cpu = axum.cpu_ms_per_op(&["axum"]);
            b.table
                .row("CPU per cached read: query-api", cpu(cac_cpu))
                .baseline(format!("bare axum: {}", cpu(axum_cpu)))
                .ratio(cac_cpu.unwrap_or(f64::NAN), axum_cpu.unwrap_or(0.0));
            b.table.row(
                "CPU per HTTP read: load generator (cached run)",
                cpu(cached.cpu_ms_per_op(&["bench"])),
            );
            b.procs.sample_rss();
            b.table.row(
                "RSS query-api, cached (peak)",
                finish::procs_rss(&b.procs, "query-api"),
            );
            b.table.row(
                "RSS query-api, uncached (peak)",
                finish::procs_rss(&b.procs, "query-api-uncached"),
            );
            b.table
                .row("RSS bare axum (peak)", finish::procs_rss(&b.procs, "axum"));
            axum_svc.stop(Duration::from_secs(5)).await;
            uncached_svc.stop(Duration::from_secs(5)).await;
        }
        (Err(e), _) => b.table.not_measured("reads", format!("{e:#}")),
        (_, Err(e)) => b.table.not_measured("reads", format!("query-api: {e:#}")),
    }
    Ok(())
}

/// `GET /v1/orders/{id}` over the first `among` ids.
fn http_read_op(
    http: reqwest::Client,
    base: String,
    ids: Arc<Vec<Uuid>>,
    among: usize,
) -> measure::OpFn {
    let among = among.max(1).min(ids.len().max(1));
    op(move |seq, worker| {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        async move {
            let id = ids[(measure::mix(seq ^ ((worker as u64) << 40)) % among as u64) as usize];
            let r = http.get(format!("{base}/v1/orders/{id}")).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            if !status.is_success() {
                bail!(
                    "GET order answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        }
    })
}
