//! The projector: Kafka consumers that fold the event stream into the CQL read models.
//!
//! Data flow: the events topic → one consumer group per projection and generation
//! ([`consumer`]) → batches decoded and grouped by aggregate ([`batch`]) → the projection's
//! idempotent writes ([`projections`]) → the batch's offsets in `projection_offsets`
//! ([`registry`]), only after the writes succeeded. Records that cannot be applied go to the
//! dead-letter topic ([`topic`]). [`service::run`] keeps consumers in line with the projection
//! registry (generations switch under it); [`rebuild`] fills a new generation and switches to it.
//!
//! The table contract with query-api is `projector/READ_MODELS.md`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod cli;
pub mod consumer;
pub mod control;
pub mod control_http;
pub mod control_ops;
pub mod ctl;
pub mod dead_letters;
pub mod jobs;
pub mod metrics;
pub mod projections;
pub mod rebuild;
pub mod registry;
pub mod service;
pub mod shadow;
pub mod topic;

pub use rebuild::{rebuild, rebuild_with, RebuildOptions, RebuildReport};
pub use service::run;
