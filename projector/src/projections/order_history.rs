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

use read_models::order_history::order_events;
use read_models::schema::{binds, list};

use super::batched::{self, Write};
use super::{AggregateEvents, ApplyError, Projection, ProjectionWriter};

pub const NAME: &str = read_models::order_history::NAME;

/// `order_events` columns written, in binding order.
const COLUMNS: [&str; 4] = [
    order_events::TENANT_ID,
    order_events::AGGREGATE_ID,
    order_events::SEQUENCE,
    order_events::ENVELOPE,
];

/// The text of the writer's insert for one generation, from the `read-models` columns.
pub fn insert_statement(keyspace: &str, g: i32) -> String {
    format!(
        "INSERT INTO {} ({}) VALUES ({}) USING TIMESTAMP ?",
        order_events::TABLE.qualified(keyspace, g),
        list(&COLUMNS),
        binds(&COLUMNS)
    )
}

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
        read_models::order_history::PROJECTION.bases
    }

    fn ddl(&self, g: i32) -> Vec<String> {
        read_models::order_history::PROJECTION.ddl(g)
    }

    async fn writer(
        &self,
        session: Arc<Session>,
        keyspace: &str,
        g: i32,
    ) -> anyhow::Result<Arc<dyn ProjectionWriter>> {
        let mut insert = session.prepare(insert_statement(keyspace, g)).await?;
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
    fn the_writer_s_insert_names_only_columns_of_order_events() {
        let insert = insert_statement("ks", 2);
        assert_eq!(
            read_models::check_statement(&insert, read_models::order_history::PROJECTION.tables),
            Ok(())
        );
        assert_eq!(COLUMNS.to_vec(), order_events::TABLE.column_names());
    }

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
