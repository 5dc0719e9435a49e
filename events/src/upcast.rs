//! Upcasters: old schema versions are turned into the current one when read, never rewritten.
//!
//! Each step takes a payload of version `n` to `n + 1`; [`upcast`] chains them until the current
//! version of the type is reached.

use serde_json::Value;

use crate::OrderEvent;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unknown aggregate type {0:?}")]
    UnknownAggregate(String),
    #[error("{event_type} schema version {version} is newer than this build understands")]
    FutureVersion { event_type: String, version: u32 },
    #[error("{event_type} v{from} cannot be upcast: {reason}")]
    Upcast {
        event_type: String,
        from: u32,
        reason: String,
    },
    #[error("{event_type} payload does not match its schema: {reason}")]
    Payload { event_type: String, reason: String },
}

/// Bring `payload` from `version` to the current schema version of `event_type`.
pub fn upcast(
    event_type: &str,
    mut version: u32,
    mut payload: Value,
) -> Result<Value, DecodeError> {
    if !OrderEvent::TYPES.contains(&event_type) {
        return Err(DecodeError::UnknownType(event_type.to_string()));
    }
    let current = OrderEvent::current_schema_version(event_type);
    if version > current || version == 0 {
        return Err(DecodeError::FutureVersion {
            event_type: event_type.to_string(),
            version,
        });
    }
    while version < current {
        payload = step(event_type, version, payload)?;
        version += 1;
    }
    Ok(payload)
}

fn step(event_type: &str, from: u32, payload: Value) -> Result<Value, DecodeError> {
    match (event_type, from) {
        ("ItemAdded", 1) => rename(payload, "price_cents", "unit_price_cents").map_err(|reason| {
            DecodeError::Upcast {
                event_type: event_type.to_string(),
                from,
                reason,
            }
        }),
        _ => Err(DecodeError::Upcast {
            event_type: event_type.to_string(),
            from,
            reason: "no upcaster registered".to_string(),
        }),
    }
}

fn rename(mut payload: Value, from: &str, to: &str) -> Result<Value, String> {
    let object = payload
        .as_object_mut()
        .ok_or_else(|| "payload is not an object".to_string())?;
    let value = object
        .remove(from)
        .ok_or_else(|| format!("field {from:?} missing"))?;
    object.insert(to.to_string(), value);
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LineItem;
    use serde_json::json;

    #[test]
    fn item_added_v1_is_upcast_to_the_current_shape() {
        let v1 = json!({"sku": "A-1", "quantity": 3, "price_cents": 499});
        let event = OrderEvent::from_payload("ItemAdded", 1, v1).unwrap();
        assert_eq!(
            event,
            OrderEvent::ItemAdded(LineItem {
                sku: "A-1".into(),
                quantity: 3,
                unit_price_cents: 499
            })
        );
    }

    #[test]
    fn current_versions_pass_through_unchanged() {
        let v2 = json!({"sku": "A-1", "quantity": 3, "unit_price_cents": 499});
        assert_eq!(upcast("ItemAdded", 2, v2.clone()).unwrap(), v2);
    }

    #[test]
    fn a_version_from_the_future_is_refused() {
        let err = upcast("ItemAdded", 9, json!({})).unwrap_err();
        assert!(matches!(err, DecodeError::FutureVersion { version: 9, .. }));
    }

    #[test]
    fn an_unknown_type_is_refused() {
        assert_eq!(
            upcast("OrderTeleported", 1, json!({})).unwrap_err(),
            DecodeError::UnknownType("OrderTeleported".into())
        );
    }

    #[test]
    fn a_broken_v1_payload_says_what_is_missing() {
        let err = upcast("ItemAdded", 1, json!({"sku": "A"})).unwrap_err();
        assert!(err.to_string().contains("price_cents"), "{err}");
    }
}
