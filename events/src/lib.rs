//! Everything that crosses Kafka, defined once.
//!
//! A command produces domain events (`OrderEvent`); each one travels wrapped in an [`EventEnvelope`]
//! serialized as JSON, keyed by aggregate id, with its type and schema version also in record headers.
//! Consumers decode the envelope, then turn its payload into a typed event with
//! [`OrderEvent::from_envelope`], which upcasts old schema versions on the fly. Stored events are never
//! rewritten.

mod envelope;
pub mod order;
mod upcast;

pub use envelope::{headers, EventEnvelope, EventMetadata, DEFAULT_TENANT};
pub use order::{LineItem, OrderEvent, ORDER_AGGREGATE};
pub use upcast::{upcast, DecodeError};
