//! End-to-end tests that share the running stack peacefully (each uses its own topic and ids).
//! Run them with `infra/dev test`, which brings the stack up first.

// A test binary: helpers may panic like the tests they serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod commands;
mod errors;
mod export;
mod exports;
mod foundation;
mod instances;
mod partitions;
mod security;
mod status;
mod traces;
