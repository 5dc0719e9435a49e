//! The order, as a user of `cqrs-es` would write it: commands, events, the aggregate and one view.
//! The rules are the ones of this repository's order where the shapes allow (an order is placed
//! once, items only while open, the payment equals the total, shipping needs the payment).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope, View};
use serde::{Deserialize, Serialize};

pub const MAX_LINES: usize = 100;
pub const MAX_LINE_QUANTITY: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    New,
    Open,
    Paid,
    Shipped,
}

#[derive(Debug)]
pub enum Command {
    Place {
        order_id: String,
        customer_id: String,
        currency: String,
        items: Vec<Line>,
    },
    AddItem(Line),
    Pay {
        amount_cents: i64,
        payment_ref: String,
    },
    Ship {
        carrier: String,
        tracking_number: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    OrderPlaced {
        order_id: String,
        customer_id: String,
        currency: String,
        items: Vec<Line>,
    },
    ItemAdded(Line),
    PaymentRecorded {
        amount_cents: i64,
        payment_ref: String,
    },
    OrderShipped {
        carrier: String,
        tracking_number: String,
    },
}

impl DomainEvent for Event {
    fn event_type(&self) -> String {
        match self {
            Event::OrderPlaced { .. } => "OrderPlaced",
            Event::ItemAdded(_) => "ItemAdded",
            Event::PaymentRecorded { .. } => "PaymentRecorded",
            Event::OrderShipped { .. } => "OrderShipped",
        }
        .to_string()
    }
    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the order does not exist")]
    NotFound,
    #[error("the order has already been placed")]
    AlreadyPlaced,
    #[error("the order is {0:?}, not open")]
    NotOpen(Status),
    #[error("the order is not paid")]
    NotPaid,
    #[error("an order holds at most {MAX_LINES} lines")]
    TooManyLines,
    #[error("a line holds at most {MAX_LINE_QUANTITY} units")]
    LineQuantityTooLarge,
    #[error("the unit price differs from the line's")]
    PriceMismatch,
    #[error("the amount must equal the order total {0}")]
    AmountMismatch(i64),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Order {
    status: Status,
    items: Vec<Line>,
}

impl Order {
    fn total_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }

    fn require_open(&self) -> Result<(), OrderError> {
        match self.status {
            Status::Open => Ok(()),
            Status::New => Err(OrderError::NotFound),
            other => Err(OrderError::NotOpen(other)),
        }
    }

    fn decide(&self, command: Command) -> Result<Event, OrderError> {
        match command {
            Command::Place {
                order_id,
                customer_id,
                currency,
                items,
            } => {
                if self.status != Status::New {
                    return Err(OrderError::AlreadyPlaced);
                }
                if items.len() > MAX_LINES {
                    return Err(OrderError::TooManyLines);
                }
                Ok(Event::OrderPlaced {
                    order_id,
                    customer_id,
                    currency,
                    items,
                })
            }
            Command::AddItem(line) => {
                self.require_open()?;
                match self.items.iter().find(|l| l.sku == line.sku) {
                    Some(existing) if existing.unit_price_cents != line.unit_price_cents => {
                        return Err(OrderError::PriceMismatch)
                    }
                    Some(existing)
                        if existing.quantity.saturating_add(line.quantity) > MAX_LINE_QUANTITY =>
                    {
                        return Err(OrderError::LineQuantityTooLarge)
                    }
                    None if self.items.len() >= MAX_LINES => return Err(OrderError::TooManyLines),
                    _ => {}
                }
                Ok(Event::ItemAdded(line))
            }
            Command::Pay {
                amount_cents,
                payment_ref,
            } => {
                self.require_open()?;
                let total = self.total_cents();
                if amount_cents != total {
                    return Err(OrderError::AmountMismatch(total));
                }
                Ok(Event::PaymentRecorded {
                    amount_cents,
                    payment_ref,
                })
            }
            Command::Ship {
                carrier,
                tracking_number,
            } => {
                if self.status == Status::New {
                    return Err(OrderError::NotFound);
                }
                if self.status != Status::Paid {
                    return Err(OrderError::NotPaid);
                }
                Ok(Event::OrderShipped {
                    carrier,
                    tracking_number,
                })
            }
        }
    }
}

fn add_line(items: &mut Vec<Line>, line: &Line) {
    match items.iter_mut().find(|l| l.sku == line.sku) {
        Some(existing) => existing.quantity += line.quantity,
        None => items.push(line.clone()),
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = Command;
    type Event = Event;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = self.decide(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            Event::OrderPlaced { items, .. } => {
                self.status = Status::Open;
                self.items = items;
            }
            Event::ItemAdded(line) => add_line(&mut self.items, &line),
            Event::PaymentRecorded { .. } => self.status = Status::Paid,
            Event::OrderShipped { .. } => self.status = Status::Shipped,
        }
    }
}

/// The order's view, kept by a `GenericQuery` over a `PostgresViewRepository`, as the demo does.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub status: Status,
    pub items: Vec<Line>,
    pub total_cents: i64,
    /// The sequence number of the last event the view applied.
    pub version: usize,
}

impl View<Order> for OrderView {
    fn update(&mut self, event: &EventEnvelope<Order>) {
        self.version = event.sequence;
        match &event.payload {
            Event::OrderPlaced {
                order_id,
                customer_id,
                currency,
                items,
            } => {
                self.order_id.clone_from(order_id);
                self.customer_id.clone_from(customer_id);
                self.currency.clone_from(currency);
                self.items.clone_from(items);
                self.status = Status::Open;
            }
            Event::ItemAdded(line) => add_line(&mut self.items, line),
            Event::PaymentRecorded { .. } => self.status = Status::Paid,
            Event::OrderShipped { .. } => self.status = Status::Shipped,
        }
        self.total_cents = self
            .items
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum();
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type Given = TestFramework<Order>;

    fn line(sku: &str, quantity: u32) -> Line {
        Line {
            sku: sku.into(),
            quantity,
            unit_price_cents: 100,
        }
    }

    fn placed() -> Event {
        Event::OrderPlaced {
            order_id: "o".into(),
            customer_id: "c".into(),
            currency: "EUR".into(),
            items: vec![line("A", 1)],
        }
    }

    #[test]
    fn an_item_is_added_to_an_open_order() {
        Given::with(())
            .given(vec![placed()])
            .when(Command::AddItem(line("B", 2)))
            .then_expect_events(vec![Event::ItemAdded(line("B", 2))]);
    }

    #[test]
    fn an_unknown_order_takes_no_item() {
        let result = Given::with(())
            .given_no_previous_events()
            .when(Command::AddItem(line("B", 2)))
            .inspect_result();
        assert!(matches!(result, Err(OrderError::NotFound)));
    }

    #[test]
    fn the_payment_must_equal_the_total() {
        let result = Given::with(())
            .given(vec![placed(), Event::ItemAdded(line("A", 2))])
            .when(Command::Pay {
                amount_cents: 100,
                payment_ref: "p".into(),
            })
            .inspect_result();
        assert!(matches!(result, Err(OrderError::AmountMismatch(300))));
    }

    #[test]
    fn the_view_sums_the_lines() {
        let mut view = OrderView::default();
        for (sequence, payload) in [(1, placed()), (2, Event::ItemAdded(line("A", 2)))] {
            view.update(&EventEnvelope {
                aggregate_id: "o".into(),
                sequence,
                payload,
                metadata: Default::default(),
            });
        }
        assert_eq!(view.version, 2);
        assert_eq!(view.items, vec![line("A", 3)]);
        assert_eq!(view.total_cents, 300);
    }
}
