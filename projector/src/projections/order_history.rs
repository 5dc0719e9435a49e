//! Projection `order_history`: every envelope of an order, keyed by its sequence, exactly as it
//! was consumed from Kafka.
//!
//! Each event becomes one [`HistoryRow`] written `USING TIMESTAMP <sequence>`; a replayed envelope
//! rewrites identical content, so applying twice is the same as applying once.

use std::sync::Arc;

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::batched::{self, Write};
use super::{qualified, AggregateEvents, ApplyError, Projection, ProjectionWriter};

pub const NAME: &str = "order_history";
const TABLES: &[&str] = &["order_events"];

/// One `order_events` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub tenant_id: String,
    pub aggregate_id: Uuid,
    pub sequence: i64,
    pub envelope: Arc<str>,
}

/// The rows an aggregate's events become.
pub fn rows(aggregate: &AggregateEvents) -> Vec<HistoryRow> {
    aggregate
        .events
        .iter()
        .filter_map(|event| {
            Some(HistoryRow {
                tenant_id: aggregate.tenant_id.clone(),
                aggregate_id: aggregate.aggregate_id,
                sequence: i64::try_from(event.envelope.sequence).ok()?,
                envelope: event.raw.clone(),
            })
        })
        .collect()
}

/// The projection's registration.
pub struct OrderHistory;

#[async_trait]
impl Projection for OrderHistory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    fn ddl(&self, g: i32) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS order_events_g{g} (\
             tenant_id text, aggregate_id uuid, sequence bigint, \
             envelope text, \
             PRIMARY KEY ((tenant_id, aggregate_id), sequence))"
        )]
    }

    async fn writer(
        &self,
        session: Arc<Session>,
        keyspace: &str,
        g: i32,
    ) -> anyhow::Result<Arc<dyn ProjectionWriter>> {
        let mut insert = session
            .prepare(format!(
                "INSERT INTO {} (tenant_id, aggregate_id, sequence, envelope) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
                qualified(keyspace, "order_events", g)
            ))
            .await?;
        insert.set_is_idempotent(true);
        Ok(Arc::new(HistoryWriter { session, insert }))
    }
}

struct HistoryWriter {
    session: Arc<Session>,
    insert: PreparedStatement,
}

#[async_trait]
impl ProjectionWriter for HistoryWriter {
    async fn apply_batch(&self, batch: &[&AggregateEvents]) -> Vec<Result<(), ApplyError>> {
        let writes = batch
            .iter()
            .enumerate()
            .flat_map(|(owner, aggregate)| rows(aggregate).into_iter().map(move |row| (owner, row)))
            .map(|(owner, row)| Write {
                owner,
                statement: &self.insert,
                bytes: 64 + row.envelope.len(),
                values: Box::new((
                    row.tenant_id,
                    row.aggregate_id,
                    row.sequence,
                    row.envelope.to_string(),
                    row.sequence,
                )),
            })
            .collect();
        let mut failed = batched::write_all(&self.session, writes).await;
        (0..batch.len())
            .map(|owner| failed.remove(&owner).map_or(Ok(()), Err))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::fixtures::{aggregate, at, event};
    use events::OrderEvent;

    #[test]
    fn every_event_becomes_one_row_keyed_by_its_sequence_holding_the_raw_envelope() {
        let order = Uuid::now_v7();
        let events = vec![
            event(
                order,
                1,
                at(1, 9),
                OrderEvent::ItemRemoved { sku: "A".into() },
            ),
            event(
                order,
                2,
                at(1, 10),
                OrderEvent::OrderCancelled { reason: "x".into() },
            ),
        ];
        let raws: Vec<_> = events.iter().map(|e| e.raw.clone()).collect();

        let rows = rows(&aggregate(order, events));

        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].sequence, 1);
        assert_eq!(rows[1].sequence, 2);
        assert_eq!(rows[1].aggregate_id, order);
        assert_eq!(rows[0].envelope, raws[0]);
        assert_eq!(rows[1].envelope, raws[1]);
    }
}
