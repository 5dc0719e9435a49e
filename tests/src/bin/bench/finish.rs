//! The end of a run: notes, the markdown report, and the cleanup.

use crate::measure::Procs;
use crate::{report, section, workload, Bench};

/// Notes, the report (stdout and files), and the run's keyspace and topics dropped unless `--keep`.
pub async fn finish(b: &mut Bench) -> anyhow::Result<()> {
    let (plan, now, started, partitions) = (&b.plan, b.now, b.started, b.settings.kafka.partitions);
    let (cli, session, settings, raw_kafka, out_dir) =
        (&b.cli, &b.session, &b.settings, &b.raw_kafka, &b.out_dir);
    let table = &mut b.table;
    let ks = &settings.cql.keyspace;
    table.note(format!(
        "durations: warm-up {:?}, throughput {:?} per point, open-loop latency {:?}; backlog {} orders × {} events in waves of {}; {} partitions",
        plan.warmup, plan.throughput, plan.latency, plan.backlog_orders, workload::STEPS, plan.wave, partitions
    ));
    table.note("services run as child processes of the bench binary (release build, same code as the service binaries); the load generator shares the 2 cores with them and with the Kafka and Cassandra JVMs");
    table.note("CPU = utime+stime from /proc/<pid>/stat over the measured window, divided by the successful operations; RSS = peak VmRSS sampled every 250 ms");
    table.note(format!(
        "total run time {:.0} s",
        started.elapsed().as_secs_f64()
    ));

    let header = format!(
        "## Benchmark {} ({})\n\n{} UTC on {}; stack: Kafka (KRaft, 1 broker) and Apache Cassandra 5 from `infra/dev`; commit {}",
        now.format("%Y-%m-%d %H:%M"),
        if cli.quick { "--quick" } else { "full" },
        now.format("%Y-%m-%d %H:%M:%S"),
        report::hardware(),
        git_rev()
    );
    let md = table.markdown(&header);
    println!("\n{md}");
    std::fs::create_dir_all(out_dir)?;
    let file = out_dir.join(format!("bench-{}.md", now.format("%Y%m%d-%H%M%S")));
    std::fs::write(&file, &md)?;
    std::fs::write(out_dir.join("bench-latest.md"), &md)?;
    eprintln!("written to {} and bench-latest.md", file.display());

    if !cli.keep {
        section("cleanup");
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
            .await;
        if let Ok(admin) = infra::kafka::admin(&settings.kafka) {
            let opts = rdkafka::admin::AdminOptions::new();
            let _ = admin
                .delete_topics(
                    &[
                        settings.kafka.topic.as_str(),
                        settings.kafka.dead_letter_topic.as_str(),
                        raw_kafka.topic.as_str(),
                        raw_kafka.dead_letter_topic.as_str(),
                    ],
                    &opts,
                )
                .await;
        }
    }
    Ok(())
}

pub fn procs_rss(procs: &Procs, label: &str) -> String {
    procs
        .peak_rss_mib(label)
        .map(|m| format!("{m:.0} MiB"))
        .unwrap_or_else(|| "n/a".into())
}

/// The commit the binary was run from, with "(+ uncommitted work)" only when the tree has
/// changes to tracked files or new files (`git status --porcelain`).
fn git_rev() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=normal"])
        .is_some_and(|s| !s.trim().is_empty());
    if dirty {
        format!("{} (+ uncommitted work)", rev.trim())
    } else {
        rev.trim().to_string()
    }
}
