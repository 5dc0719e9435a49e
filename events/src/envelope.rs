//! The envelope every event travels in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The tenant of requests when authentication is switched off (and of events written before tokens
/// named tenants).
pub const DEFAULT_TENANT: &str = "default";

/// Names of the Kafka record headers that repeat envelope fields for tools that do not parse JSON.
pub mod headers {
    pub const EVENT_ID: &str = "event_id";
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const AGGREGATE_TYPE: &str = "aggregate_type";
    pub const TENANT_ID: &str = "tenant_id";
    pub const SEQUENCE: &str = "sequence";
    pub const COMMAND_ID: &str = "command_id";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    pub const CONTENT_TYPE: &str = "content-type";
    /// Set on dead letters: why the record could not be applied, and where it came from.
    pub const DLQ_ERROR: &str = "dlq.error";
    pub const DLQ_PROJECTION: &str = "dlq.projection";
    pub const DLQ_ORIGIN_TOPIC: &str = "dlq.origin.topic";
    pub const DLQ_ORIGIN_PARTITION: &str = "dlq.origin.partition";
    pub const DLQ_ORIGIN_OFFSET: &str = "dlq.origin.offset";
}

/// What a command carries into every event it causes: who asked, why, and the trace it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventMetadata {
    pub command_id: Uuid,
    pub correlation_id: String,
    pub causation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// One event as it is stored in Kafka and served to analysts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// UUIDv7: sortable by creation time.
    pub event_id: Uuid,
    pub tenant_id: String,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// 1-based and contiguous per aggregate.
    pub sequence: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub metadata: EventMetadata,
    pub payload: serde_json::Value,
}

impl EventEnvelope {
    /// The Kafka record key: the aggregate id, so one aggregate's events share a partition.
    pub fn key(&self) -> String {
        self.aggregate_id.to_string()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of plain fields and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
