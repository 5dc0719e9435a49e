//! The aggregate's row as the write path needs it, and the per-instance cache of rows.
//!
//! The cache only saves reads. It may be stale at any moment (another instance wrote the row), so
//! the write path never answers a refusal from it without reading the row again, and its success
//! path is guarded by the LWT's version condition.

use std::collections::HashMap;
use std::sync::Mutex;

use events::EventEnvelope;
use uuid::Uuid;

use crate::domain::order::Order;

/// The aggregate's row as the write path needs it.
#[derive(Debug, Clone)]
pub struct Head {
    pub version: i64,
    pub state: Order,
    pub partition: i32,
    pub pending: Vec<EventEnvelope>,
    /// Kafka acknowledged `pending` (as recorded on its intent, or seen by this instance).
    pub pending_published: bool,
    /// Idempotency key -> the first answer (JSON of a `CommandOutcome`).
    pub recent: HashMap<String, String>,
}

impl Head {
    /// The last batch is committed but not known to be in Kafka.
    pub fn has_unpublished(&self) -> bool {
        !self.pending.is_empty() && !self.pending_published
    }
}

/// Rows this instance read or wrote last, bounded.
pub struct HeadCache {
    heads: Mutex<HashMap<(String, Uuid), Head>>,
    capacity: usize,
}

impl HeadCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            heads: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, tenant: &str, id: Uuid) -> Option<Head> {
        self.heads
            .lock()
            .ok()?
            .get(&(tenant.to_string(), id))
            .cloned()
    }

    pub fn put(&self, tenant: &str, id: Uuid, head: Head) {
        if let Ok(mut heads) = self.heads.lock() {
            let key = (tenant.to_string(), id);
            if heads.len() >= self.capacity && !heads.contains_key(&key) {
                // Evict an arbitrary entry; a miss only costs one read.
                if let Some(victim) = heads.keys().next().cloned() {
                    heads.remove(&victim);
                }
            }
            heads.insert(key, head);
        }
    }

    pub fn forget(&self, tenant: &str, id: Uuid) {
        if let Ok(mut heads) = self.heads.lock() {
            heads.remove(&(tenant.to_string(), id));
        }
    }
}

/// Commands on one aggregate queue up inside an instance instead of racing each other's LWT.
pub struct Turns(Vec<tokio::sync::Mutex<()>>);

const STRIPES: usize = 1024;

impl Turns {
    pub fn new() -> Self {
        Self((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect())
    }

    pub async fn take(&self, id: Uuid) -> tokio::sync::MutexGuard<'_, ()> {
        self.0[(id.as_u128() as u64 % STRIPES as u64) as usize]
            .lock()
            .await
    }
}

impl Default for Turns {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use events::EventMetadata;

    #[test]
    fn a_head_with_an_unconfirmed_batch_needs_publishing() {
        let env = EventEnvelope {
            event_id: Uuid::nil(),
            tenant_id: "default".into(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::nil(),
            sequence: 3,
            event_type: "OrderCancelled".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: EventMetadata::default(),
            payload: serde_json::json!({"reason": "r"}),
        };
        let mut head = Head {
            version: 3,
            state: Order::default(),
            partition: 0,
            pending: vec![env],
            pending_published: false,
            recent: HashMap::new(),
        };
        assert!(head.has_unpublished());
        head.pending_published = true;
        assert!(!head.has_unpublished());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = HeadCache::new(2);
        let head = Head {
            version: 1,
            state: Order::default(),
            partition: 0,
            pending: vec![],
            pending_published: true,
            recent: HashMap::new(),
        };
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            cache.put("t", *id, head.clone());
        }
        assert_eq!(
            ids.iter()
                .filter(|id| cache.get("t", **id).is_some())
                .count(),
            2
        );
        assert!(cache.get("t", ids[2]).is_some(), "the newest entry stays");
        cache.forget("t", ids[2]);
        assert!(cache.get("t", ids[2]).is_none());
    }
}
