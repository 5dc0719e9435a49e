//! The CI-sized fault suite against the cluster stack (`infra/dev up --cluster`): one kill of one
//! instance of each service, one broker kill, one Cassandra node kill, under load through
//! HAProxy; nothing acknowledged may be lost and the views must equal a rebuild of the topic.
//! Run it with `infra/dev test --cluster` (the whole suite: `infra/dev faults`).

// A test binary: helpers may panic like the tests they serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tests::faults::plan::Plan;
use tests::faults::{run, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs infra/dev up --cluster"]
async fn the_cluster_survives_a_kill_of_each_service_a_broker_and_a_cassandra_node_under_load() {
    let settings = infra::Settings::load().unwrap();
    let options = Options::new(Plan::ci(), &settings);
    let report = run(&settings, &options).await.unwrap();
    println!("\n{}", report.render());
    assert_eq!(report.lost(), 0, "acknowledged commands lost");
    assert_eq!(report.views_differing(), 0, "views differing");
    assert!(
        report.comparison.is_some(),
        "the views were not compared with a rebuild"
    );
    assert!(report.final_findings.is_some(), "no final check");
    assert_eq!(report.trials.len(), Plan::ci().trials(), "every trial ran");
    assert!(report.passed(), "failed checks: {:#?}", report.failures());
}
