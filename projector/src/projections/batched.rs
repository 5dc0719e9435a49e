//! The writes of a whole batch, sent as few unlogged CQL batches as the cluster allows.
//!
//! A projected event costs two to four small writes; sent one by one, the database spends most
//! of its CPU on request handling rather than on the writes (issue #5, BENCHMARKS.md). Here the
//! writes of every aggregate of a consumer batch are grouped by the first replica of their
//! partition, so each unlogged batch goes to a node that owns all of its rows (no coordinator
//! fan-out on a real cluster; one group on a single node), and cut into chunks small enough to stay
//! below the database's batch-size limits.
//!
//! Unlogged batches are not atomic across partitions, and need not be: every write here is
//! idempotent (`USING TIMESTAMP <version>`), and each writer orders its phases itself (the
//! `orders` detail row only after the other tables succeeded). A chunk the database refuses is
//! retried statement by statement, so a refusal is charged to the aggregate that caused it and
//! never dead-letters its neighbours.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use scylla::client::session::Session;
use scylla::cluster::ClusterState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::ApplyError;

/// Bound values of one statement.
pub(crate) type Values = Box<dyn SerializeRow + Send + Sync>;

/// At most this many statements per batch.
const MAX_STATEMENTS: usize = 32;
/// At most about this many bytes of values per batch: Cassandra warns above
/// `batch_size_warn_threshold` (5 KiB by default; `infra/dev` raises it) and refuses above
/// `batch_size_fail_threshold` (50 KiB).
const MAX_BYTES: usize = 24 * 1024;
/// Batches in flight at once per call.
const CONCURRENCY: usize = 8;

/// One write, on behalf of `owner` (the index of its aggregate in the consumer batch).
pub(crate) struct Write<'a> {
    pub owner: usize,
    pub statement: &'a PreparedStatement,
    pub values: Values,
    /// An estimate of the size of the values, for cutting chunks.
    pub bytes: usize,
}

/// Send every write; the owners whose writes failed, with the error.
pub(crate) async fn write_all(
    session: &Session,
    writes: Vec<Write<'_>>,
) -> HashMap<usize, ApplyError> {
    if writes.is_empty() {
        return HashMap::new();
    }
    let state = session.get_cluster_state();
    // With one node every write has the same replica: skip computing tokens (it serializes the
    // values once more).
    let one_node = state.get_nodes_info().len() <= 1;
    let mut by_replica: HashMap<Option<Uuid>, Vec<Write<'_>>> = HashMap::new();
    for write in writes {
        let replica = if one_node {
            None
        } else {
            first_replica(&state, &write)
        };
        by_replica.entry(replica).or_default().push(write);
    }
    let chunks: Vec<Vec<Write<'_>>> = by_replica
        .into_values()
        .flat_map(|writes| chunks(writes, |w| w.bytes))
        .collect();
    // Futures built first (they are lazy: none starts here), which sidesteps a closure lifetime
    // the Send bound of the writers' async trait cannot express.
    let pending: Vec<_> = chunks
        .into_iter()
        .map(|chunk| write_chunk(session, chunk))
        .collect();
    let failures: Vec<Vec<(usize, ApplyError)>> = stream::iter(pending)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut failed = HashMap::new();
    for (owner, error) in failures.into_iter().flatten() {
        failed.entry(owner).or_insert(error);
    }
    failed
}

/// The node that owns the write's partition first (`None` when the driver cannot tell: such
/// writes are batched together and routed by the driver as usual).
fn first_replica(state: &ClusterState, write: &Write<'_>) -> Option<Uuid> {
    let token = write.statement.calculate_token(&write.values).ok()??;
    let keyspace = write.statement.get_keyspace_name()?;
    let table = write.statement.get_table_name()?;
    state
        .get_token_endpoints(keyspace, table, token)
        .first()
        .map(|(node, _shard)| node.host_id)
}

/// Cut a replica's writes into chunks within the statement and size bounds (a write larger than
/// the size bound still goes, alone).
fn chunks<T>(writes: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0;
    for write in writes {
        let write_bytes = size(&write);
        if !current.is_empty()
            && (current.len() >= MAX_STATEMENTS || bytes + write_bytes > MAX_BYTES)
        {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += write_bytes;
        current.push(write);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

async fn write_chunk(session: &Session, chunk: Vec<Write<'_>>) -> Vec<(usize, ApplyError)> {
    if let [write] = chunk.as_slice() {
        return match session
            .execute_unpaged(write.statement, &write.values)
            .await
        {
            Ok(_) => Vec::new(),
            Err(err) => vec![(write.owner, ApplyError::from(err))],
        };
    }
    let mut batch = Batch::new(BatchType::Unlogged);
    for write in &chunk {
        batch.append_statement(write.statement.clone());
    }
    batch.set_is_idempotent(true);
    let values: Vec<&Values> = chunk.iter().map(|write| &write.values).collect();
    let error = match session.batch(&batch, &values).await {
        Ok(_) => return Vec::new(),
        Err(err) => ApplyError::from(err),
    };
    if error.is_unavailable() {
        // Retried as a whole by the consumer, for as long as the database is away.
        return chunk.iter().map(|w| (w.owner, error.clone())).collect();
    }
    // Refused: find out which writes the database refuses, one by one.
    tracing::debug!(statements = chunk.len(), %error, "batch refused; writing its statements one by one");
    let mut failed = Vec::new();
    for write in &chunk {
        if let Err(err) = session
            .execute_unpaged(write.statement, &write.values)
            .await
        {
            failed.push((write.owner, ApplyError::from(err)));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(sizes: &[usize]) -> Vec<usize> {
        chunks(sizes.to_vec(), |&size| size)
            .iter()
            .map(Vec::len)
            .collect()
    }

    #[test]
    fn chunks_hold_at_most_the_statement_bound_and_the_byte_bound_in_order() {
        assert_eq!(lengths(&[100; 70]), vec![32, 32, 6]);
        assert_eq!(lengths(&[10_000; 5]), vec![2, 2, 1]);
        assert_eq!(lengths(&[60_000, 10]), vec![1, 1]);
        assert!(lengths(&[]).is_empty());
        let order: Vec<usize> = chunks((0..70).collect(), |_| 1).concat();
        assert_eq!(order, (0..70).collect::<Vec<_>>());
    }
}
