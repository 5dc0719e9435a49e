//! The write side's aggregates. One folder per aggregate: its commands, its errors, and the
//! cqrs-es `Aggregate` that turns commands into events (defined in the `events` crate).

pub mod order;
