//! Unmeasured load on the JVMs before the first measurement: rounds of raw LWTs, commands and raw
//! produces until the raw LWT rate of a round is within 10 % of the previous one (the JIT has
//! settled), between the bounds of the plan's `stack_warmup`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::measure::closed_loop;
use crate::raw::{Raw, RawOps};
use crate::{section, workload, Bench};

pub async fn run(b: &mut Bench, raw: &Arc<Raw>) {
    let cmd_base = b.cmd_base();
    // ---------------------------------------------------------------- JVM warm-up
    // Rounds of raw LWTs, commands and raw produces until the raw LWT rate of a round is within
    // 10 % of the previous one (the JIT has settled), between the bounds of `stack_warmup`.
    section("warm-up of Kafka and Cassandra (not measured)");
    let warm_started = Instant::now();
    let mut last_lwt: Option<f64> = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut lwt = 0.0;
        for (label, secs, warm) in [
            ("warm-up: raw CQL LWT insert", 2, raw.lwt_op()),
            (
                "warm-up: commands (mix)",
                2,
                workload::closed_commands(b.http.clone(), cmd_base.clone(), 32),
            ),
            ("warm-up: raw produce", 1, raw.produce_op()),
        ] {
            let outcome = closed_loop(
                label,
                32,
                Duration::ZERO,
                Duration::from_secs(secs),
                &b.procs,
                warm,
            )
            .await;
            if lwt == 0.0 {
                lwt = outcome.rate();
            }
        }
        let settled = last_lwt.is_some_and(|last| (lwt - last).abs() <= 0.1 * last);
        last_lwt = Some(lwt);
        let (least, most) = b.plan.stack_warmup;
        let elapsed = warm_started.elapsed();
        if (settled && elapsed >= least) || elapsed >= most {
            break;
        }
    }
    let warmed = format!(
        "{rounds} rounds, {:.0} s",
        warm_started.elapsed().as_secs_f64()
    );
    eprintln!("  warmed up in {warmed}");
    b.table.note(format!(
        "Kafka and Cassandra warmed up first: {warmed} of raw LWTs, commands and raw produces, until the raw LWT rate of a round was within 10 % of the previous one (not measured)"
    ));
}
