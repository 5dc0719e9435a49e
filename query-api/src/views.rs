//! Order views: the `order_detail` row as the API's JSON, served from the in-process cache when
//! fresh enough, and the bounded wait for a `min_version` (read-your-writes after a command).
//!
//! How the wait avoids hammering CQL: all requests waiting on the same order share **one poller
//! task** (registered in `pollers` by order id), which publishes each read on a `watch` channel;
//! every waiter returns as soon as the published view reaches its own `min_version`. The poller
//! starts from the read its first waiter just made (with the progress known before that read),
//! then **re-reads only when the `orders` projection recorded a batch**: while
//! anyone waits, one watcher task reads the projection's offsets every 2 ms (one small
//! single-partition query for all waiters) and wakes the pollers when they moved. So waiting costs
//! one read per order per projector batch, not per timer tick: when the projector falls behind,
//! waiting readers do not add load in proportion to the lag and feed it. When the store cannot
//! tell the progress, pollers fall back to a timer (2, 4, 8 ms…, capped at 10 ms). Each waiter is
//! bounded by its own deadline (`min_version_wait_ms`, shortened by `wait_ms`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cache::{CachedView, OrderCache};
use crate::error::{ApiError, ApiResult};
use crate::store::{OrderRow, ReadModels, StoreError, StoreResult};

const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(2);
// Short enough that a waiting read sees the projector's write within ~10 ms (freshness), few
// enough reads to be cheap: one poller per order, shared by all its waiters.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often the watcher reads the projection's progress while anyone waits.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(2);
/// A poller re-reads after this long even when no progress was seen (the projector writes its
/// offsets after the views, so this is only a safety net).
const MAX_GATED_WAIT: Duration = Duration::from_millis(250);

/// A line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// The current state of an order, as projected from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderDetail {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// `open`, `paid`, `shipped` or `cancelled`.
    pub status: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    /// The sequence of the last event applied; also the `ETag`.
    pub version: i64,
    #[schema(format = DateTime)]
    pub placed_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// RFC 3339 UTC with milliseconds (the precision of CQL timestamps).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The row as the API's JSON body.
pub fn render(row: &OrderRow) -> StoreResult<CachedView> {
    let items: Vec<OrderLine> = serde_json::from_str(&row.items_json)
        .map_err(|e| StoreError::corrupt("order_detail.items")(&e))?;
    let detail = OrderDetail {
        order_id: row.order_id,
        customer_id: row.customer_id,
        currency: row.currency.clone(),
        status: row.status.clone(),
        items,
        total_cents: row.total_cents,
        version: row.version,
        placed_at: rfc3339(row.placed_at),
        updated_at: rfc3339(row.updated_at),
    };
    let body = serde_json::to_vec(&detail).map_err(|e| StoreError::corrupt("order_detail")(&e))?;
    Ok(CachedView {
        version: row.version,
        body: Bytes::from(body),
    })
}

/// What the shared poller of one order saw last.
#[derive(Debug, Clone)]
enum Polled {
    Missing,
    Found(Arc<CachedView>),
    Failed(StoreError),
}

/// An order of a tenant.
type OrderKey = (String, Uuid);

pub struct OrderViews {
    store: Arc<dyn ReadModels>,
    cache: OrderCache,
    pollers: Mutex<HashMap<OrderKey, Arc<watch::Sender<Polled>>>>,
    /// The topic whose offsets measure the projection's progress.
    topic: String,
    /// The `orders` projection's progress (see [`ReadModels::orders_progress`]), published by
    /// the watcher task while it runs.
    progress: watch::Sender<Option<i64>>,
    /// Whether the watcher runs; read and set under the `pollers` lock.
    watching: std::sync::atomic::AtomicBool,
}

impl OrderViews {
    pub fn new(store: Arc<dyn ReadModels>, cache: OrderCache, topic: &str) -> Self {
        Self {
            store,
            cache,
            pollers: Mutex::new(HashMap::new()),
            topic: topic.to_string(),
            progress: watch::Sender::new(None),
            watching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Read the store, render, remember.
    async fn load(&self, tenant: &str, order_id: Uuid) -> StoreResult<Option<Arc<CachedView>>> {
        metrics::counter!("query_order_detail_reads_total").increment(1);
        let Some(row) = self.store.order_detail(tenant, order_id).await? else {
            return Ok(None);
        };
        let view = Arc::new(render(&row)?);
        self.cache
            .insert(row.generation, tenant, order_id, view.clone());
        Ok(Some(view))
    }

    fn cached(
        &self,
        tenant: &str,
        order_id: Uuid,
        min_version: Option<i64>,
    ) -> Option<Arc<CachedView>> {
        let generation = self.store.orders_generation()?;
        let hit = self.cache.get(generation, tenant, order_id, min_version);
        let result = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("query_order_cache_lookups_total", "result" => result).increment(1);
        hit
    }

    /// The view as fresh as the cache TTL allows; `None` for an unknown order.
    pub async fn get(&self, tenant: &str, order_id: Uuid) -> StoreResult<Option<Arc<CachedView>>> {
        if let Some(view) = self.cached(tenant, order_id, None) {
            return Ok(Some(view));
        }
        self.load(tenant, order_id).await
    }

    /// The view once its version is at least `min_version`, waiting at most `wait`.
    pub async fn get_at_least(
        self: &Arc<Self>,
        tenant: &str,
        order_id: Uuid,
        min_version: i64,
        wait: Duration,
    ) -> ApiResult<Arc<CachedView>> {
        let deadline = Instant::now() + wait;
        if let Some(view) = self.cached(tenant, order_id, Some(min_version)) {
            return Ok(view);
        }
        // Progress as known before this read: a poller started on it re-reads only once the
        // projection moved past it (a stale value only costs one early re-read).
        let seen = *self.progress.borrow();
        let first = self.load(tenant, order_id).await?;
        if let Some(view) = first.as_ref().filter(|v| v.version >= min_version) {
            return Ok(view.clone());
        }
        let mut rx = self.subscribe(tenant, order_id, seen, &first);
        let caught = tokio::time::timeout_at(deadline, async {
            rx.wait_for(|p| match p {
                Polled::Found(v) => v.version >= min_version,
                Polled::Failed(_) => true,
                Polled::Missing => false,
            })
            .await
            .map(|polled| polled.clone())
        })
        .await;
        // Timed out, or the poller went away (cannot happen while we listen): judge by what it
        // saw last.
        let caught = caught.ok().and_then(Result::ok);
        let last = caught.unwrap_or_else(|| rx.borrow().clone());
        let waited = match &last {
            Polled::Found(v) if v.version >= min_version => "caught_up",
            Polled::Failed(_) => "failed",
            _ => "timed_out",
        };
        metrics::counter!("query_min_version_waits_total", "outcome" => waited).increment(1);
        match last {
            Polled::Found(v) if v.version >= min_version => Ok(v),
            Polled::Failed(e) => Err(e.into()),
            Polled::Found(v) => Err(ApiError::NotCaughtUp {
                wanted: min_version,
                current: v.version,
            }),
            // The poller found nothing, but this waiter's own read had found an older version.
            Polled::Missing => match first {
                Some(v) => Err(ApiError::NotCaughtUp {
                    wanted: min_version,
                    current: v.version,
                }),
                None => Err(not_found(order_id)),
            },
        }
    }

    /// Listen to the order's poller, starting one if nobody polls it yet. A new poller starts
    /// from the waiter's own read (`first`, made after `seen` was the progress) instead of
    /// reading the same row again at once.
    fn subscribe(
        self: &Arc<Self>,
        tenant: &str,
        order_id: Uuid,
        seen: Option<i64>,
        first: &Option<Arc<CachedView>>,
    ) -> watch::Receiver<Polled> {
        let mut pollers = self.pollers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (tenant.to_string(), order_id);
        if let Some(tx) = pollers.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(match first {
            Some(view) => Polled::Found(view.clone()),
            None => Polled::Missing,
        });
        let tx = Arc::new(tx);
        pollers.insert(key.clone(), tx.clone());
        let views = self.clone();
        tokio::spawn(async move { views.poll(key, tx, seen).await });
        if !self
            .watching
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let views = self.clone();
            tokio::spawn(async move { views.watch_progress().await });
        }
        rx
    }

    /// Read the projection's progress every [`PROGRESS_INTERVAL`] and publish it when it
    /// changes, until no poller is left.
    async fn watch_progress(self: Arc<Self>) {
        loop {
            {
                let pollers = self.pollers.lock().unwrap_or_else(PoisonError::into_inner);
                if pollers.is_empty() {
                    self.watching
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
            let progress = match self.store.orders_progress(&self.topic).await {
                Ok(progress) => progress,
                Err(error) => {
                    tracing::debug!(%error, "reading the projection's progress");
                    None
                }
            };
            self.progress.send_if_modified(|seen| {
                let changed = *seen != progress;
                *seen = progress;
                changed
            });
            tokio::time::sleep(PROGRESS_INTERVAL).await;
        }
    }

    /// Re-read the order for its waiters until none is left; the first read was the starting
    /// waiter's, made after the progress was `seen`.
    async fn poll(
        self: Arc<Self>,
        key: OrderKey,
        tx: Arc<watch::Sender<Polled>>,
        seen: Option<i64>,
    ) {
        let mut interval = FIRST_POLL_INTERVAL;
        let mut progress = self.progress.subscribe();
        let mut gated = seen.is_some();
        if gated && *progress.borrow_and_update() != seen {
            // It moved since (or the watcher had not started and `seen` is stale): look again.
            progress.mark_changed();
        }
        loop {
            {
                // Checked under the registry lock, so a waiter either joins before we leave (and
                // we go on) or finds no poller and starts a new one.
                let mut pollers = self.pollers.lock().unwrap_or_else(PoisonError::into_inner);
                if tx.receiver_count() == 0 {
                    pollers.remove(&key);
                    return;
                }
            }
            if gated {
                let _ = tokio::time::timeout(MAX_GATED_WAIT, progress.changed()).await;
            } else {
                tokio::time::sleep(interval).await;
                interval = (interval * 2).min(MAX_POLL_INTERVAL);
            }
            // Progress seen before the read: whatever the projector records after it wakes us.
            gated = progress.borrow_and_update().is_some();
            let polled = match self.load(&key.0, key.1).await {
                Ok(Some(view)) => Polled::Found(view),
                Ok(None) => Polled::Missing,
                Err(e) => Polled::Failed(e),
            };
            tx.send_replace(polled);
        }
    }

    /// Orders being polled for waiters right now.
    pub fn active_pollers(&self) -> usize {
        self.pollers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

pub fn not_found(order_id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no order {order_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;

    fn views(store: Arc<MemoryStore>) -> Arc<OrderViews> {
        Arc::new(OrderViews::new(
            store,
            OrderCache::new(100, Duration::from_secs(60)),
            "events",
        ))
    }

    #[test]
    fn a_row_renders_as_the_contract_says() {
        let id = Uuid::nil();
        let view = render(&MemoryStore::order(id, 4)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
        assert_eq!(json["version"], 4);
        assert_eq!(json["items"][0]["sku"], "A-1");
        assert_eq!(json["items"][0]["unit_price_cents"], 150);
        assert_eq!(json["placed_at"], "2024-05-01T12:00:00.000Z");
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "currency",
                "customer_id",
                "items",
                "order_id",
                "placed_at",
                "status",
                "total_cents",
                "updated_at",
                "version"
            ]
        );
    }

    #[tokio::test]
    async fn a_cached_older_version_is_never_served_to_min_version() {
        let store = Arc::new(MemoryStore::new());
        let id = Uuid::now_v7();
        store.put(MemoryStore::order(id, 1));
        let v = views(store.clone());
        assert_eq!(v.get("t", id).await.unwrap().unwrap().version, 1);
        store.put(MemoryStore::order(id, 2));
        // Without min_version the cached view is fine…
        assert_eq!(v.get("t", id).await.unwrap().unwrap().version, 1);
        // …with it, the store is read.
        let got = v
            .get_at_least("t", id, 2, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(got.version, 2);
        // And the cache moved forward.
        assert_eq!(v.get("t", id).await.unwrap().unwrap().version, 2);
    }

    #[tokio::test]
    async fn waiting_returns_once_the_projection_catches_up() {
        let store = Arc::new(MemoryStore::new());
        let id = Uuid::now_v7();
        store.put(MemoryStore::order(id, 1));
        store.bump_per_read.lock().unwrap().insert(id, 1);
        let v = views(store.clone());
        let got = v
            .get_at_least("t", id, 5, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(got.version >= 5);
    }

    #[tokio::test]
    async fn a_new_poller_starts_from_its_waiters_read_instead_of_reading_again() {
        let store = Arc::new(MemoryStore::new());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        store.put(MemoryStore::order(a, 1));
        store.put(MemoryStore::order(b, 1));
        *store.progress.lock().unwrap() = Some(10);
        let v = views(store.clone());
        // A first waiter starts the progress watcher.
        let first = {
            let v = v.clone();
            tokio::spawn(async move { v.get_at_least("t", a, 2, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let before = store.detail_reads.load(Ordering::SeqCst);

        let second = {
            let v = v.clone();
            tokio::spawn(async move { v.get_at_least("t", b, 2, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Its own read only: the poller it started did not read the same row again.
        assert_eq!(store.detail_reads.load(Ordering::SeqCst), before + 1);

        store.put(MemoryStore::order(b, 2));
        *store.progress.lock().unwrap() = Some(11);
        let got = tokio::time::timeout(Duration::from_millis(50), second)
            .await
            .expect("woken by the progress")
            .unwrap()
            .unwrap();
        assert_eq!(got.version, 2);
        first.abort();
    }

    #[tokio::test]
    async fn with_known_progress_a_waiter_rereads_only_after_the_projection_moved() {
        let store = Arc::new(MemoryStore::new());
        let id = Uuid::now_v7();
        store.put(MemoryStore::order(id, 1));
        *store.progress.lock().unwrap() = Some(10);
        let v = views(store.clone());
        let waiter = {
            let v = v.clone();
            tokio::spawn(async move { v.get_at_least("t", id, 2, Duration::from_secs(5)).await })
        };
        // Let the watcher publish the progress and the poller settle on it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let settled = store.detail_reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // On a timer it would have read ~10 more times in 100 ms; gated, not once.
        assert_eq!(store.detail_reads.load(Ordering::SeqCst), settled);
        assert!(!waiter.is_finished());

        // The projector applies version 2 and records its batch: the waiter sees it promptly.
        store.put(MemoryStore::order(id, 2));
        *store.progress.lock().unwrap() = Some(11);
        let got = tokio::time::timeout(Duration::from_millis(50), waiter)
            .await
            .expect("woken by the progress, not by the fallback timer")
            .unwrap()
            .unwrap();
        assert_eq!(got.version, 2);
        assert_eq!(store.detail_reads.load(Ordering::SeqCst), settled + 1);
    }

    #[tokio::test]
    async fn many_waiters_share_one_poller() {
        let store = Arc::new(MemoryStore::new());
        let id = Uuid::now_v7();
        store.put(MemoryStore::order(id, 1));
        let v = views(store.clone());
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let v = v.clone();
                tokio::spawn(
                    async move { v.get_at_least("t", id, 9, Duration::from_millis(300)).await },
                )
            })
            .collect();
        for w in waiters {
            let err = w.await.unwrap().unwrap_err();
            assert!(matches!(
                err,
                ApiError::NotCaughtUp {
                    wanted: 9,
                    current: 1
                }
            ));
        }
        // 50 direct first reads plus one shared poller (at most one read per 10 ms): far fewer
        // than the ~1500 that 50 waiters polling on their own would make.
        let reads = store.detail_reads.load(Ordering::SeqCst);
        assert!(reads < 50 + 45, "{reads} reads");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(v.active_pollers(), 0, "the poller stops when nobody waits");
    }

    #[tokio::test]
    async fn an_unknown_order_is_404_after_the_wait() {
        let store = Arc::new(MemoryStore::new());
        let v = views(store);
        let started = std::time::Instant::now();
        let err = v
            .get_at_least("t", Uuid::now_v7(), 1, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(err.to_problem().status, 404);
    }

    #[tokio::test]
    async fn a_view_that_stays_behind_is_503_with_retry_after() {
        let store = Arc::new(MemoryStore::new());
        let id = Uuid::now_v7();
        store.put(MemoryStore::order(id, 3));
        let v = views(store);
        let p = v
            .get_at_least("t", id, 4, Duration::from_millis(30))
            .await
            .unwrap_err()
            .to_problem();
        assert_eq!(p.status, 503);
        assert!(p.retry_after_secs.is_some());
    }
}
