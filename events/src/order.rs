//! The order domain's events, as plain data.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::upcast::{upcast, DecodeError};
use crate::EventEnvelope;

pub const ORDER_AGGREGATE: &str = "order";

/// A line of an order. Money is integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// Everything that can happen to an order. The serialized form of a variant's fields is the
/// envelope's `payload`; its name is the envelope's `event_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum OrderEvent {
    OrderPlaced {
        order_id: Uuid,
        customer_id: Uuid,
        currency: String,
        items: Vec<LineItem>,
    },
    ItemAdded(LineItem),
    ItemRemoved {
        sku: String,
    },
    PaymentRecorded {
        amount_cents: i64,
        payment_ref: String,
    },
    OrderShipped {
        carrier: String,
        tracking_number: String,
    },
    OrderCancelled {
        reason: String,
    },
}

impl OrderEvent {
    pub const TYPES: [&'static str; 6] = [
        "OrderPlaced",
        "ItemAdded",
        "ItemRemoved",
        "PaymentRecorded",
        "OrderShipped",
        "OrderCancelled",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::ItemAdded(_) => "ItemAdded",
            OrderEvent::ItemRemoved { .. } => "ItemRemoved",
            OrderEvent::PaymentRecorded { .. } => "PaymentRecorded",
            OrderEvent::OrderShipped { .. } => "OrderShipped",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
        }
    }

    /// The schema version written today for each event type. Bump it when a payload's shape
    /// changes, and add an upcaster from the previous version in `upcast.rs`.
    pub fn current_schema_version(event_type: &str) -> u32 {
        match event_type {
            // v1 named the unit price `price_cents`.
            "ItemAdded" => 2,
            _ => 1,
        }
    }

    pub fn schema_version(&self) -> u32 {
        Self::current_schema_version(self.event_type())
    }

    /// The payload as stored in the envelope.
    pub fn to_payload(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut tagged)) => {
                tagged.remove("payload").unwrap_or(serde_json::Value::Null)
            }
            _ => serde_json::Value::Null,
        }
    }

    /// Decode a payload of any known schema version of `event_type`.
    pub fn from_payload(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        // A payload of the current version passes through the upcaster untouched.
        let payload = upcast(event_type, schema_version, payload)?;
        Self::from_current_payload(event_type, &payload)
    }

    /// Decode the envelope's event. A payload of the current schema version is read in place.
    pub fn from_envelope(envelope: &EventEnvelope) -> Result<Self, DecodeError> {
        if envelope.aggregate_type != ORDER_AGGREGATE {
            return Err(DecodeError::UnknownAggregate(
                envelope.aggregate_type.clone(),
            ));
        }
        let (event_type, version) = (&envelope.event_type, envelope.schema_version);
        if version == Self::current_schema_version(event_type) {
            return Self::from_current_payload(event_type, &envelope.payload);
        }
        Self::from_payload(event_type, version, envelope.payload.clone())
    }

    /// Read a payload of the current schema version as the adjacently tagged enum, without
    /// building (or cloning into) a tagged JSON object first.
    fn from_current_payload(
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError> {
        if !Self::TYPES.contains(&event_type) {
            return Err(DecodeError::UnknownType(event_type.to_string()));
        }
        let tagged = serde::de::value::MapAccessDeserializer::new(Tagged {
            event_type,
            payload,
            read: 0,
        });
        Self::deserialize(tagged).map_err(|e| DecodeError::Payload {
            event_type: event_type.to_string(),
            reason: e.to_string(),
        })
    }
}

/// `{"event_type": …, "payload": …}` as a map the derived deserializer reads, borrowing both.
struct Tagged<'a> {
    event_type: &'a str,
    payload: &'a serde_json::Value,
    /// Entries handed out so far.
    read: u8,
}

impl<'de> serde::de::MapAccess<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer;
        let key = match self.read {
            0 => "event_type",
            1 => "payload",
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::IntoDeserializer;
        self.read += 1;
        if self.read == 1 {
            seed.deserialize(self.event_type.into_deserializer())
        } else {
            seed.deserialize(self.payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventMetadata;
    use chrono::{TimeZone, Utc};

    fn every_event() -> Vec<OrderEvent> {
        let line = LineItem {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_cents: 1250,
        };
        vec![
            OrderEvent::OrderPlaced {
                order_id: Uuid::now_v7(),
                customer_id: Uuid::now_v7(),
                currency: "EUR".into(),
                items: vec![line.clone()],
            },
            OrderEvent::ItemAdded(line),
            OrderEvent::ItemRemoved {
                sku: "SKU-1".into(),
            },
            OrderEvent::PaymentRecorded {
                amount_cents: 2500,
                payment_ref: "pay-1".into(),
            },
            OrderEvent::OrderShipped {
                carrier: "DHL".into(),
                tracking_number: "T1".into(),
            },
            OrderEvent::OrderCancelled {
                reason: "changed mind".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_an_envelope() {
        for (i, event) in every_event().into_iter().enumerate() {
            let envelope = EventEnvelope {
                event_id: Uuid::now_v7(),
                tenant_id: crate::DEFAULT_TENANT.into(),
                aggregate_type: ORDER_AGGREGATE.into(),
                aggregate_id: Uuid::now_v7(),
                sequence: i as u64 + 1,
                event_type: event.event_type().into(),
                schema_version: event.schema_version(),
                occurred_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
                metadata: EventMetadata {
                    command_id: Uuid::now_v7(),
                    correlation_id: "corr".into(),
                    causation_id: "cause".into(),
                    traceparent: Some(
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    ),
                    tracestate: None,
                },
                payload: event.to_payload(),
            };
            let bytes = envelope.to_json();
            let back = EventEnvelope::from_json(&bytes).unwrap();
            assert_eq!(back, envelope);
            assert_eq!(OrderEvent::from_envelope(&back).unwrap(), event);
        }
    }

    #[test]
    fn event_type_names_match_the_serialized_tag() {
        for event in every_event() {
            let value = serde_json::to_value(&event).unwrap();
            assert_eq!(value["event_type"], event.event_type());
            assert!(OrderEvent::TYPES.contains(&event.event_type()));
        }
    }

    #[test]
    fn the_envelope_json_has_the_documented_field_names() {
        let envelope = EventEnvelope {
            event_id: Uuid::now_v7(),
            tenant_id: "default".into(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 1,
            event_type: "OrderCancelled".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: EventMetadata::default(),
            payload: serde_json::json!({"reason": "x"}),
        };
        let value: serde_json::Value = serde_json::from_slice(&envelope.to_json()).unwrap();
        for field in [
            "event_id",
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "event_type",
            "schema_version",
            "occurred_at",
            "command_id",
            "correlation_id",
            "causation_id",
            "payload",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_a_decode_error() {
        let err =
            OrderEvent::from_payload("PaymentRecorded", 1, serde_json::json!({"amount": "x"}))
                .unwrap_err();
        assert!(matches!(err, DecodeError::Payload { .. }));
    }
}
