//! The opaque `cursor` of `GET /v1/customers/{id}/orders`.
//!
//! A cursor is the clustering key of the last order of a page — `(placed_at, order_id)` — so the
//! next page is "strictly older than that key" (a keyset query). Unlike a CQL paging state it stays
//! valid across a generation switch, a node restart and a driver upgrade, and because the key is
//! unique and the order is total, following cursors lists every order exactly once. Clients see it
//! as base64url text and must not interpret it; the `v1` prefix lets the format change later.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::store::CustomerOrderKey;

const PREFIX: &str = "v1";

pub fn encode(key: &CustomerOrderKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}:{}:{}", key.placed_at_ms, key.order_id))
}

/// Why a cursor was refused (the client sent something we never issued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor is not one this service issued")]
pub struct InvalidCursor;

pub fn decode(cursor: &str) -> Result<CustomerOrderKey, InvalidCursor> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('='))
        .map_err(|_| InvalidCursor)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| InvalidCursor)?;
    let mut parts = text.splitn(3, ':');
    let (Some(PREFIX), Some(ms), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(InvalidCursor);
    };
    Ok(CustomerOrderKey {
        placed_at_ms: ms.parse().map_err(|_| InvalidCursor)?,
        order_id: Uuid::parse_str(id).map_err(|_| InvalidCursor)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        for ms in [0, 1_714_564_800_123, -5] {
            let key = CustomerOrderKey {
                placed_at_ms: ms,
                order_id: Uuid::now_v7(),
            };
            let text = encode(&key);
            assert!(text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert_eq!(decode(&text), Ok(key));
        }
    }

    #[test]
    fn foreign_cursors_are_refused() {
        assert_eq!(decode(""), Err(InvalidCursor));
        assert_eq!(decode("not base64!"), Err(InvalidCursor));
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode("v2:1:x")),
            Err(InvalidCursor)
        );
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode("v1:abc:00000000-0000-0000-0000-000000000000")),
            Err(InvalidCursor)
        );
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode("v1:1:nope")),
            Err(InvalidCursor)
        );
    }
}
