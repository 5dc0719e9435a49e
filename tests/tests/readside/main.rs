//! Acceptance tests of the read side: commands through command-api (or envelopes published
//! straight to the topic), the projector (in process, or the real binary killed with SIGKILL),
//! the CQL read models and query-api, against the real Kafka and CQL of the local stack.
//!
//! Each test has a topic and a keyspace of its own (`test_rs_…`, migrated first, dropped at the
//! end), so projections, offsets and generations never mix between tests. Waits are on the
//! projector's stored offsets reaching the topic's end ([`tests::Keyspace::drain`]), not on clocks.
//!
//! The child-process tests need the projector binary next to the test executable
//! (`target/debug/projector`: `infra/dev up` builds it, or `cargo build -p projector`).

// A test binary: helpers may panic like the tests they serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod control;
mod dead_letters;
mod failover;
mod model;
mod projections;
mod rebuild;
mod shadow;
mod visibility;
