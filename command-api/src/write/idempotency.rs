//! Idempotency keys: the answers remembered on an aggregate's row, the fingerprint that tells a
//! retry from a reuse of the key for another request, and the order id a key names on creation.

use std::collections::HashMap;

use uuid::Uuid;

use super::CommandOutcome;
use crate::domain::order::OrderCommand;

/// Namespace of the order ids named by idempotency keys (UUIDv5 of tenant and key).
const ORDER_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x4f7a_1c2e_93d8_4b6f_a0c5_2e61_d8b9_7f34);
/// Namespace of request fingerprints.
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x9b3e_55a1_07c4_4d2a_8f16_c3e0_4a7d_21b9);

/// The order a creation's `Idempotency-Key` names, within its tenant: the same key gives the same
/// id on every instance, so every retry meets the first one at the same row and its LWT.
pub fn order_id_for_key(tenant: &str, key: &str) -> Uuid {
    let mut name = Vec::with_capacity(tenant.len() + key.len() + 1);
    name.extend_from_slice(tenant.as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    Uuid::new_v5(&ORDER_KEY_NAMESPACE, &name)
}

/// A digest of what the client asked (the validated command), stored with its answer.
pub fn fingerprint(command: &OrderCommand) -> Uuid {
    let bytes = serde_json::to_vec(command).unwrap_or_default();
    Uuid::new_v5(&FINGERPRINT_NAMESPACE, &bytes)
}

/// What a key seen again on this row means for this request.
pub enum Remembered {
    /// Not seen: run the command.
    New,
    /// The same request again: answer this.
    Replay(CommandOutcome),
    /// The key answered another request.
    Reused,
}

pub fn remembered(
    recent: &HashMap<String, String>,
    key: Option<&str>,
    fingerprint: Uuid,
) -> Remembered {
    let Some(stored) = key.and_then(|k| recent.get(k)) else {
        return Remembered::New;
    };
    match serde_json::from_str::<CommandOutcome>(stored) {
        Ok(outcome) if outcome.fingerprint.is_some_and(|f| f != fingerprint) => Remembered::Reused,
        Ok(outcome) => Remembered::Replay(outcome),
        Err(_) => Remembered::New,
    }
}

/// Keep the `keep` most recent answers (by the version they produced). The creation's answer
/// (201) is never dropped: its key names the order for as long as the order exists.
pub fn prune(recent: &mut HashMap<String, String>, keep: usize) {
    if recent.len() <= keep {
        return;
    }
    let mut by_version: Vec<(i64, String)> = recent
        .iter()
        .filter_map(|(k, v)| {
            let outcome = serde_json::from_str::<CommandOutcome>(v).ok();
            match outcome {
                Some(o) if o.status == 201 => None,
                Some(o) => Some((o.body.version, k.clone())),
                None => Some((0, k.clone())),
            }
        })
        .collect();
    by_version.sort();
    let excess = recent.len().saturating_sub(keep);
    for (_, key) in by_version.into_iter().take(excess) {
        recent.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::CommandResponse;

    fn outcome(status: u16, version: i64, fingerprint: Option<Uuid>) -> String {
        serde_json::to_string(&CommandOutcome {
            status,
            body: CommandResponse {
                order_id: Uuid::nil(),
                version,
                events: vec![],
            },
            fingerprint,
        })
        .unwrap()
    }

    #[test]
    fn pruning_keeps_the_newest_answers_and_the_creation() {
        let mut recent: HashMap<String, String> = (2..=5)
            .map(|v| (format!("k{v}"), outcome(200, v, None)))
            .collect();
        recent.insert("create".into(), outcome(201, 1, None));
        prune(&mut recent, 3);
        let mut keys: Vec<_> = recent.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, vec!["create", "k4", "k5"]);
    }

    #[test]
    fn a_key_names_one_order_per_tenant() {
        assert_eq!(order_id_for_key("t1", "k"), order_id_for_key("t1", "k"));
        assert_ne!(order_id_for_key("t1", "k"), order_id_for_key("t2", "k"));
        assert_ne!(order_id_for_key("t1", "k"), order_id_for_key("t1", "k2"));
        // No ambiguity between ("ab", "c") and ("a", "bc").
        assert_ne!(order_id_for_key("ab", "c"), order_id_for_key("a", "bc"));
    }

    #[test]
    fn a_key_with_another_request_is_a_reuse_and_with_the_same_a_replay() {
        let cancel = |reason: &str| OrderCommand::CancelOrder {
            reason: reason.into(),
        };
        let first = fingerprint(&cancel("late"));
        let recent = HashMap::from([("k".to_string(), outcome(200, 2, Some(first)))]);
        assert!(matches!(
            remembered(&recent, Some("k"), fingerprint(&cancel("late"))),
            Remembered::Replay(o) if o.body.version == 2
        ));
        assert!(matches!(
            remembered(&recent, Some("k"), fingerprint(&cancel("other"))),
            Remembered::Reused
        ));
        assert!(matches!(
            remembered(&recent, Some("other"), first),
            Remembered::New
        ));
        assert!(matches!(remembered(&recent, None, first), Remembered::New));
    }
}
