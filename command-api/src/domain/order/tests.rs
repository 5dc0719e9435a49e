//! Given/when/then tests of every rule and every refusal of the order aggregate.

use cqrs_es::test::TestFramework;
use events::{LineItem, OrderEvent};
use uuid::Uuid;

use super::*;

type OrderTest = TestFramework<Order>;

fn line(sku: &str, quantity: u32, price: i64) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents: price,
    }
}

fn ev(e: OrderEvent) -> OrderDomainEvent {
    OrderDomainEvent(e)
}

fn placed(items: Vec<LineItem>) -> OrderDomainEvent {
    ev(OrderEvent::OrderPlaced {
        order_id: Uuid::from_u128(1),
        customer_id: Uuid::from_u128(2),
        currency: "EUR".into(),
        items,
    })
}

fn paid(amount: i64) -> OrderDomainEvent {
    ev(OrderEvent::PaymentRecorded {
        amount_cents: amount,
        payment_ref: "p-1".into(),
    })
}

fn cancelled() -> OrderDomainEvent {
    ev(OrderEvent::OrderCancelled { reason: "r".into() })
}

fn shipped() -> OrderDomainEvent {
    ev(OrderEvent::OrderShipped {
        carrier: "c".into(),
        tracking_number: "t".into(),
    })
}

fn place(items: Vec<LineItem>) -> OrderCommand {
    OrderCommand::PlaceOrder {
        order_id: Uuid::from_u128(1),
        customer_id: Uuid::from_u128(2),
        currency: "EUR".into(),
        items,
    }
}

#[test]
fn placing_a_new_order_emits_order_placed() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![line("A", 1, 100)]))
        .then_expect_events(vec![placed(vec![line("A", 1, 100)])]);
}

#[test]
fn placing_an_order_without_lines_is_allowed() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![]))
        .then_expect_events(vec![placed(vec![])]);
}

#[test]
fn placing_an_order_twice_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![])])
        .when(place(vec![]))
        .then_expect_error(OrderError::AlreadyPlaced);
}

#[test]
fn placing_an_order_with_more_than_100_lines_is_refused() {
    let items = (0..101).map(|i| line(&format!("S{i}"), 1, 1)).collect();
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(items))
        .then_expect_error(OrderError::TooManyLines);
}

#[test]
fn placing_an_order_with_a_repeated_sku_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![line("A", 1, 1), line("A", 2, 1)]))
        .then_expect_error(OrderError::DuplicateSku { sku: "A".into() });
}

#[test]
fn adding_an_item_to_an_open_order_emits_item_added() {
    OrderTest::with(())
        .given(vec![placed(vec![])])
        .when(OrderCommand::AddItem(line("A", 2, 100)))
        .then_expect_events(vec![ev(OrderEvent::ItemAdded(line("A", 2, 100)))]);
}

#[test]
fn adding_a_sku_already_on_the_order_adds_to_its_quantity() {
    let result = OrderTest::with(())
        .given(vec![placed(vec![line("A", 2, 100)])])
        .when(OrderCommand::AddItem(line("A", 3, 100)))
        .inspect_result();
    let mut order = Order::default();
    order.evolve(&placed(vec![line("A", 2, 100)]).0);
    for e in result.unwrap() {
        order.evolve(&e.0);
    }
    assert_eq!(order.items, vec![line("A", 5, 100)]);
    assert_eq!(order.total_cents(), 500);
}

#[test]
fn adding_a_sku_at_another_price_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 2, 100)])])
        .when(OrderCommand::AddItem(line("A", 1, 90)))
        .then_expect_error(OrderError::PriceMismatch {
            sku: "A".into(),
            existing: 100,
            given: 90,
        });
}

#[test]
fn adding_beyond_1000_units_on_a_line_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 999, 1)])])
        .when(OrderCommand::AddItem(line("A", 2, 1)))
        .then_expect_error(OrderError::LineQuantityTooLarge {
            sku: "A".into(),
            quantity: 1001,
        });
}

#[test]
fn adding_a_101st_line_is_refused() {
    let items = (0..100).map(|i| line(&format!("S{i}"), 1, 1)).collect();
    OrderTest::with(())
        .given(vec![placed(items)])
        .when(OrderCommand::AddItem(line("NEW", 1, 1)))
        .then_expect_error(OrderError::TooManyLines);
}

#[test]
fn adding_to_an_order_that_does_not_exist_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(OrderCommand::AddItem(line("A", 1, 1)))
        .then_expect_error(OrderError::NotPlaced);
}

#[test]
fn adding_to_a_paid_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), paid(5)])
        .when(OrderCommand::AddItem(line("B", 1, 1)))
        .then_expect_error(OrderError::NotOpen { status: "paid" });
}

#[test]
fn removing_an_item_on_the_order_emits_item_removed() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)])])
        .when(OrderCommand::RemoveItem { sku: "A".into() })
        .then_expect_events(vec![ev(OrderEvent::ItemRemoved { sku: "A".into() })]);
}

#[test]
fn removing_a_sku_not_on_the_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)])])
        .when(OrderCommand::RemoveItem { sku: "B".into() })
        .then_expect_error(OrderError::SkuNotOnOrder { sku: "B".into() });
}

#[test]
fn removing_from_a_cancelled_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), cancelled()])
        .when(OrderCommand::RemoveItem { sku: "A".into() })
        .then_expect_error(OrderError::NotOpen {
            status: "cancelled",
        });
}

#[test]
fn paying_the_exact_total_emits_payment_recorded() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 2, 150), line("B", 1, 25)])])
        .when(OrderCommand::RecordPayment {
            amount_cents: 325,
            payment_ref: "p-1".into(),
        })
        .then_expect_events(vec![paid(325)]);
}

#[test]
fn paying_another_amount_than_the_total_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 2, 150)])])
        .when(OrderCommand::RecordPayment {
            amount_cents: 299,
            payment_ref: "p".into(),
        })
        .then_expect_error(OrderError::AmountMismatch {
            expected: 300,
            given: 299,
        });
}

#[test]
fn paying_an_order_without_lines_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![])])
        .when(OrderCommand::RecordPayment {
            amount_cents: 0,
            payment_ref: "p".into(),
        })
        .then_expect_error(OrderError::NothingToPay);
}

#[test]
fn paying_a_cancelled_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), cancelled()])
        .when(OrderCommand::RecordPayment {
            amount_cents: 5,
            payment_ref: "p".into(),
        })
        .then_expect_error(OrderError::NotOpen {
            status: "cancelled",
        });
}

#[test]
fn paying_twice_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), paid(5)])
        .when(OrderCommand::RecordPayment {
            amount_cents: 5,
            payment_ref: "p".into(),
        })
        .then_expect_error(OrderError::NotOpen { status: "paid" });
}

#[test]
fn shipping_a_paid_order_emits_order_shipped() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), paid(5)])
        .when(OrderCommand::ShipOrder {
            carrier: "c".into(),
            tracking_number: "t".into(),
        })
        .then_expect_events(vec![shipped()]);
}

#[test]
fn shipping_an_open_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)])])
        .when(OrderCommand::ShipOrder {
            carrier: "c".into(),
            tracking_number: "t".into(),
        })
        .then_expect_error(OrderError::NotPaid { status: "open" });
}

#[test]
fn shipping_twice_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), paid(5), shipped()])
        .when(OrderCommand::ShipOrder {
            carrier: "c".into(),
            tracking_number: "t".into(),
        })
        .then_expect_error(OrderError::NotPaid { status: "shipped" });
}

#[test]
fn cancelling_an_open_order_emits_order_cancelled() {
    OrderTest::with(())
        .given(vec![placed(vec![])])
        .when(OrderCommand::CancelOrder { reason: "r".into() })
        .then_expect_events(vec![cancelled()]);
}

#[test]
fn cancelling_a_paid_order_emits_order_cancelled() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), paid(5)])
        .when(OrderCommand::CancelOrder { reason: "r".into() })
        .then_expect_events(vec![cancelled()]);
}

#[test]
fn cancelling_a_shipped_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![line("A", 1, 5)]), paid(5), shipped()])
        .when(OrderCommand::CancelOrder { reason: "r".into() })
        .then_expect_error(OrderError::NotCancellable { status: "shipped" });
}

#[test]
fn cancelling_twice_is_refused() {
    OrderTest::with(())
        .given(vec![placed(vec![]), cancelled()])
        .when(OrderCommand::CancelOrder { reason: "r".into() })
        .then_expect_error(OrderError::NotCancellable {
            status: "cancelled",
        });
}

#[test]
fn status_follows_the_events() {
    let mut order = Order::default();
    assert_eq!(order.status, OrderStatus::New);
    for (e, status) in [
        (placed(vec![line("A", 1, 5)]), OrderStatus::Open),
        (paid(5), OrderStatus::Paid),
        (shipped(), OrderStatus::Shipped),
    ] {
        order.evolve(&e.0);
        assert_eq!(order.status, status);
    }
}
