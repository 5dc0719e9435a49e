//! The write path as several instances over one store: the in-memory doubles share their tables
//! the way instances share the CQL database. The same behaviour is checked end to end, against
//! real Kafka and Cassandra and several command-api processes, in `tests/tests/e2e`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use events::{EventMetadata, LineItem};
use uuid::Uuid;

use super::idempotency::order_id_for_key;
use super::memory::{MemoryLog, MemoryStore};
use super::store::{AggregateStore, NewRow};
use super::*;
use crate::domain::order::Order;
use crate::sweeper;

struct Cluster {
    store: Arc<MemoryStore>,
    log: Arc<MemoryLog>,
    instances: Vec<WritePath>,
}

fn cluster(n: usize) -> Cluster {
    let store = Arc::new(MemoryStore::new("t1"));
    let log = Arc::new(MemoryLog::new(6));
    let limits = Limits {
        keys_per_aggregate: 4,
        ..Limits::default()
    };
    let instances = (0..n)
        .map(|_| WritePath::new(store.clone(), log.clone(), limits.clone()))
        .collect();
    Cluster {
        store,
        log,
        instances,
    }
}

fn ctx(order_id: Uuid, command: OrderCommand) -> CommandContext {
    CommandContext {
        tenant: "t1".into(),
        order_id,
        command,
        idempotency_key: None,
        if_match: None,
        metadata: EventMetadata::default(),
    }
}

fn place(order_id: Uuid) -> OrderCommand {
    OrderCommand::PlaceOrder {
        order_id,
        customer_id: Uuid::nil(),
        currency: "EUR".into(),
        items: vec![LineItem {
            sku: "A".into(),
            quantity: 2,
            unit_price_cents: 500,
        }],
    }
}

fn pay(amount_cents: i64) -> OrderCommand {
    OrderCommand::RecordPayment {
        amount_cents,
        payment_ref: "p".into(),
    }
}

fn ship() -> OrderCommand {
    OrderCommand::ShipOrder {
        carrier: "c".into(),
        tracking_number: "t".into(),
    }
}

#[tokio::test]
async fn a_refusal_decided_on_a_stale_copy_is_confirmed_and_overturned() {
    let c = cluster(2);
    let (a, b) = (&c.instances[0], &c.instances[1]);
    let id = Uuid::now_v7();
    a.execute(ctx(id, place(id))).await.unwrap();
    // `a` caches the open order; `b` pays it.
    b.execute(ctx(id, pay(1000))).await.unwrap();
    let serial_before = c.store.serial_reads.load(Ordering::Relaxed);
    // `a`'s copy says "open": shipping must still succeed, as one instance would answer.
    let shipped = a.execute(ctx(id, ship())).await.unwrap();
    assert_eq!(shipped.body.version, 3);
    assert_eq!(
        c.store.serial_reads.load(Ordering::Relaxed),
        serial_before + 1,
        "one serial read confirmed the refusal"
    );
    assert_eq!(c.log.sequences(id), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_stale_copy_never_answers_412_and_a_true_refusal_stays_refused() {
    let c = cluster(2);
    let (a, b) = (&c.instances[0], &c.instances[1]);
    let id = Uuid::now_v7();
    a.execute(ctx(id, place(id))).await.unwrap();
    b.execute(ctx(
        id,
        OrderCommand::AddItem(LineItem {
            sku: "B".into(),
            quantity: 1,
            unit_price_cents: 1,
        }),
    ))
    .await
    .unwrap();
    // `a` believes version 1; the client knows version 2.
    let mut cancel = ctx(id, OrderCommand::CancelOrder { reason: "r".into() });
    cancel.if_match = Some(2);
    assert_eq!(a.execute(cancel).await.unwrap().body.version, 3);

    // Shipping a cancelled order is refused, after a confirmation, by both instances alike.
    for instance in [a, b] {
        let err = instance.execute(ctx(id, ship())).await.unwrap_err();
        assert!(
            matches!(err, CommandError::Rule(OrderError::NotPaid { .. })),
            "{err}"
        );
    }
    let mut stale = ctx(id, pay(1000));
    stale.if_match = Some(1);
    assert!(matches!(
        b.execute(stale).await.unwrap_err(),
        CommandError::PreconditionFailed {
            expected: 1,
            actual: 3
        }
    ));
    assert_eq!(c.store.version(id), 3, "nothing written by refusals");
}

#[tokio::test]
async fn one_key_names_one_order_from_any_instance() {
    let c = cluster(3);
    let id = order_id_for_key("t1", "create-1");
    let mut answers = Vec::new();
    for instance in &c.instances {
        for _ in 0..2 {
            let mut call = ctx(id, place(id));
            call.idempotency_key = Some("create-1".into());
            answers.push(instance.execute(call).await.unwrap());
        }
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].status, 201);
    assert_eq!(c.log.sequences(id), vec![1], "one order placed, once");

    // The same key with another body is refused, from any instance.
    let other = OrderCommand::PlaceOrder {
        order_id: id,
        customer_id: Uuid::nil(),
        currency: "USD".into(),
        items: vec![],
    };
    let mut call = ctx(id, other);
    call.idempotency_key = Some("create-1".into());
    assert!(matches!(
        c.instances[1].execute(call).await.unwrap_err(),
        CommandError::KeyReused
    ));
}

#[tokio::test]
async fn the_creation_answer_outlives_the_pruning_of_later_keys() {
    let c = cluster(1);
    let a = &c.instances[0];
    let id = order_id_for_key("t1", "create-2");
    let mut first = ctx(id, place(id));
    first.idempotency_key = Some("create-2".into());
    let created = a.execute(first.clone()).await.unwrap();
    // More keyed commands than the row remembers (4).
    for i in 0..6 {
        let mut add = ctx(
            id,
            OrderCommand::AddItem(LineItem {
                sku: format!("S{i}"),
                quantity: 1,
                unit_price_cents: 1,
            }),
        );
        add.idempotency_key = Some(format!("add-{i}"));
        a.execute(add).await.unwrap();
    }
    assert_eq!(a.execute(first).await.unwrap(), created);
}

#[tokio::test]
async fn a_replay_is_answered_only_once_its_batch_is_in_the_log() {
    let c = cluster(2);
    let (a, b) = (&c.instances[0], &c.instances[1]);
    let id = Uuid::now_v7();
    a.execute(ctx(id, place(id))).await.unwrap();

    // Commit a keyed payment while the log fails between the LWT and the produce: the log goes
    // down after `check_available` by committing the row directly, as a writer that died would.
    let mut paid = ctx(id, pay(1000));
    paid.idempotency_key = Some("pay-1".into());
    let fingerprint = idempotency::fingerprint(&paid.command);
    let head = c
        .store
        .load("t1", id, Read::Quorum)
        .await
        .unwrap()
        .expect("placed");
    let commit = decide::run(&paid, fingerprint, &head, "t1", 4)
        .await
        .unwrap();
    let at = commit.batch[0].occurred_at;
    c.store.write_intent("t1", id, 2, at).await.unwrap();
    assert!(c
        .store
        .commit(
            "t1",
            id,
            1,
            NewRow {
                version: 2,
                state: &commit.state,
                partition: commit.partition,
                pending: &commit.batch,
                recent: &commit.recent,
                at,
            },
        )
        .await
        .unwrap());

    c.log.set_down(true);
    for instance in [a, b] {
        let err = instance.execute(paid.clone()).await.unwrap_err();
        assert!(
            matches!(err, CommandError::Unavailable("Kafka", _)),
            "{err}"
        );
    }
    assert_eq!(c.log.sequences(id), vec![1]);
    c.log.set_down(false);
    let replay = b.execute(paid).await.unwrap();
    assert_eq!(replay, commit.outcome);
    assert_eq!(
        c.log.sequences(id),
        vec![1, 2],
        "published before the replay"
    );
}

#[tokio::test]
async fn the_sweeper_goes_through_every_bucket_since_its_progress_however_old() {
    let c = cluster(1);
    let a = &c.instances[0];
    let id = Uuid::now_v7();
    // A batch committed three hours ago by a writer that died before producing it.
    let long_ago = Utc::now() - TimeDelta::hours(3);
    c.store.register_tenant("t1").await.unwrap();
    c.store
        .save_sweep_progress("t1", long_ago - TimeDelta::minutes(1))
        .await
        .unwrap();
    let mut placed = ctx(id, place(id));
    placed.metadata = EventMetadata::default();
    let head = super::decide::check(&placed, Uuid::nil(), None, || 0).unwrap();
    let super::decide::Checked::Run(head) = head else {
        panic!("a new order runs")
    };
    let mut commit = decide::run(&placed, Uuid::nil(), &head, "t1", 4)
        .await
        .unwrap();
    for e in &mut commit.batch {
        e.occurred_at = long_ago;
    }
    c.store.write_intent("t1", id, 1, long_ago).await.unwrap();
    let state: Order = commit.state.clone();
    c.store
        .commit(
            "t1",
            id,
            0,
            NewRow {
                version: 1,
                state: &state,
                partition: 0,
                pending: &commit.batch,
                recent: &commit.recent,
                at: long_ago,
            },
        )
        .await
        .unwrap();

    // Kafka down: the pass stops at that batch, reports its age and keeps the progress there.
    c.log.set_down(true);
    let lookback = TimeDelta::minutes(1);
    let grace = std::time::Duration::from_secs(1);
    assert!(sweeper::sweep(a, grace, lookback).await.is_err());
    let progress = c.store.sweep_progress("t1").await.unwrap().unwrap();
    assert!(
        progress <= long_ago,
        "progress never passes an unpublished batch"
    );

    // Back: a lookback of one minute does not skip the three-hour-old batch.
    c.log.set_down(false);
    let pass = sweeper::sweep(a, grace, lookback).await.unwrap();
    assert_eq!(pass.republished, 1);
    assert_eq!(pass.oldest_unpublished, None);
    assert!(
        pass.buckets > 3 * 700,
        "every 5-second bucket: {}",
        pass.buckets
    );
    assert_eq!(c.log.sequences(id), vec![1]);
}

#[tokio::test]
async fn racing_instances_get_distinct_contiguous_versions() {
    let c = cluster(3);
    let id = Uuid::now_v7();
    c.instances[0].execute(ctx(id, place(id))).await.unwrap();
    let calls = (0..30).map(|i| {
        c.instances[i % 3].execute(ctx(
            id,
            OrderCommand::AddItem(LineItem {
                sku: format!("S{i}"),
                quantity: 1,
                unit_price_cents: 1,
            }),
        ))
    });
    let mut versions: Vec<i64> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().body.version)
        .collect();
    versions.sort();
    assert_eq!(versions, (2..=31).collect::<Vec<_>>());
    assert_eq!(c.log.sequences(id), (1..=31).collect::<Vec<u64>>());
}
