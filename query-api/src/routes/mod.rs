//! HTTP routes, one file per resource; [`crate::app`] merges their routers.

pub mod customers;
pub mod jobs;
pub mod openapi;
pub mod order_events;
pub mod orders;
pub mod projections;
pub mod stats;
pub mod status;

/// Documents the problem+json error responses in OpenAPI.
pub(crate) const PROBLEM: &str = "application/problem+json";
