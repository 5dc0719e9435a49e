//! In-process cache of hot order views, already serialized.
//!
//! Keys are `(generation, tenant, order_id)`: after a rebuild switch, lookups use the new generation and
//! never see a view of the old one, which simply ages out. Entries live `cache_ttl_ms` (the bound
//! on how stale a read without `min_version` may be); at most `cache_capacity` are kept, evicting
//! the oldest inserted first (with a TTL the oldest entry is the next to expire anyway).
//!
//! The cache never goes backwards and never under-answers: an insert older than the cached version
//! is ignored, and a lookup with `min_version = N` misses unless the cached version is ≥ N, so the
//! caller reads the store instead.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use uuid::Uuid;

const SHARDS: usize = 16;

/// A view as served: its version and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedView {
    pub version: i64,
    pub body: Bytes,
}

type Key = (i32, String, Uuid);

struct Entry {
    view: Arc<CachedView>,
    inserted: Instant,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Key, Entry>,
    /// Keys in insertion order; holds exactly the keys of `entries`.
    order: VecDeque<Key>,
}

pub struct OrderCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    ttl: Duration,
}

impl OrderCache {
    /// `capacity` 0 or `ttl` 0 disables the cache.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            ttl,
        }
    }

    fn enabled(&self) -> bool {
        self.per_shard > 0 && !self.ttl.is_zero()
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let index = (hasher.finish() as usize) % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh view of at least `min_version` (any version when `None`).
    pub fn get(
        &self,
        generation: i32,
        tenant: &str,
        order_id: Uuid,
        min_version: Option<i64>,
    ) -> Option<Arc<CachedView>> {
        self.get_at(generation, tenant, order_id, min_version, Instant::now())
    }

    fn get_at(
        &self,
        generation: i32,
        tenant: &str,
        order_id: Uuid,
        min_version: Option<i64>,
        now: Instant,
    ) -> Option<Arc<CachedView>> {
        if !self.enabled() {
            return None;
        }
        let key = (generation, tenant.to_string(), order_id);
        let shard = self.shard(&key);
        let entry = shard.entries.get(&key)?;
        let fresh = now.saturating_duration_since(entry.inserted) < self.ttl;
        let recent_enough = min_version.is_none_or(|n| entry.view.version >= n);
        (fresh && recent_enough).then(|| entry.view.clone())
    }

    /// Remember a view just read, unless a newer one is cached.
    pub fn insert(&self, generation: i32, tenant: &str, order_id: Uuid, view: Arc<CachedView>) {
        self.insert_at(generation, tenant, order_id, view, Instant::now());
    }

    fn insert_at(
        &self,
        generation: i32,
        tenant: &str,
        order_id: Uuid,
        view: Arc<CachedView>,
        now: Instant,
    ) {
        if !self.enabled() {
            return;
        }
        let key = (generation, tenant.to_string(), order_id);
        let mut shard = self.shard(&key);
        if let Some(entry) = shard.entries.get_mut(&key) {
            if entry.view.version <= view.version {
                *entry = Entry {
                    view,
                    inserted: now,
                };
            }
            return;
        }
        while shard.entries.len() >= self.per_shard {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            shard.entries.remove(&oldest);
        }
        shard.entries.insert(
            key.clone(),
            Entry {
                view,
                inserted: now,
            },
        );
        shard.order.push_back(key.clone());
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: i64) -> Arc<CachedView> {
        Arc::new(CachedView {
            version,
            body: Bytes::from(format!("{{\"version\":{version}}}")),
        })
    }

    fn cache() -> OrderCache {
        OrderCache::new(1000, Duration::from_secs(60))
    }

    #[test]
    fn a_lookup_never_returns_a_version_older_than_asked() {
        let c = cache();
        let id = Uuid::now_v7();
        c.insert(1, "t", id, view(3));
        assert_eq!(c.get(1, "t", id, Some(3)).unwrap().version, 3);
        assert_eq!(c.get(1, "t", id, Some(2)).unwrap().version, 3);
        assert!(c.get(1, "t", id, Some(4)).is_none());
        assert_eq!(c.get(1, "t", id, None).unwrap().version, 3);
    }

    #[test]
    fn an_older_view_never_replaces_a_newer_one() {
        let c = cache();
        let id = Uuid::now_v7();
        c.insert(1, "t", id, view(5));
        c.insert(1, "t", id, view(4));
        assert_eq!(c.get(1, "t", id, None).unwrap().version, 5);
        c.insert(1, "t", id, view(6));
        assert_eq!(c.get(1, "t", id, None).unwrap().version, 6);
    }

    #[test]
    fn generations_do_not_share_entries() {
        let c = cache();
        let id = Uuid::now_v7();
        c.insert(1, "t", id, view(5));
        assert!(c.get(2, "t", id, None).is_none());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = OrderCache::new(10, Duration::from_millis(100));
        let id = Uuid::now_v7();
        let t0 = Instant::now();
        c.insert_at(1, "t", id, view(1), t0);
        assert!(c
            .get_at(1, "t", id, None, t0 + Duration::from_millis(99))
            .is_some());
        assert!(c
            .get_at(1, "t", id, None, t0 + Duration::from_millis(100))
            .is_none());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let c = OrderCache::new(32, Duration::from_secs(60));
        for _ in 0..1000 {
            c.insert(1, "t", Uuid::new_v4(), view(1));
        }
        assert!(c.len() <= 32, "{} entries", c.len());
        assert!(!c.is_empty());
    }

    #[test]
    fn a_zero_capacity_disables_the_cache() {
        let c = OrderCache::new(0, Duration::from_secs(60));
        let id = Uuid::now_v7();
        c.insert(1, "t", id, view(1));
        assert!(c.get(1, "t", id, None).is_none());
    }
}
