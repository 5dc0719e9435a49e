use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use events::{LineItem, OrderEvent, ORDER_AGGREGATE};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const MAX_LINES: usize = 100;
pub const MAX_LINE_QUANTITY: u32 = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed yet: the aggregate does not exist.
    #[default]
    New,
    Open,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::Open => "open",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub currency: String,
    pub status: OrderStatus,
    pub items: Vec<LineItem>,
}

impl Order {
    pub fn total_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|l| l.unit_price_cents * i64::from(l.quantity))
            .sum()
    }
}

/// What a client can ask of an order (already validated field by field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OrderCommand {
    PlaceOrder {
        order_id: Uuid,
        customer_id: Uuid,
        currency: String,
        items: Vec<LineItem>,
    },
    AddItem(LineItem),
    RemoveItem {
        sku: String,
    },
    RecordPayment {
        amount_cents: i64,
        payment_ref: String,
    },
    ShipOrder {
        carrier: String,
        tracking_number: String,
    },
    CancelOrder {
        reason: String,
    },
}

impl OrderCommand {
    /// A low-cardinality name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            OrderCommand::PlaceOrder { .. } => "PlaceOrder",
            OrderCommand::AddItem(_) => "AddItem",
            OrderCommand::RemoveItem { .. } => "RemoveItem",
            OrderCommand::RecordPayment { .. } => "RecordPayment",
            OrderCommand::ShipOrder { .. } => "ShipOrder",
            OrderCommand::CancelOrder { .. } => "CancelOrder",
        }
    }
}

/// Business rules that refuse a command (422, or 409 for a reused order id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("an order with this id already exists")]
    AlreadyPlaced,
    #[error("the order does not exist")]
    NotPlaced,
    #[error("the order is {status}; only an open order can be changed")]
    NotOpen { status: &'static str },
    #[error("the order is {status}; only an open or paid order can be cancelled")]
    NotCancellable { status: &'static str },
    #[error("the order is {status}; only a paid order can be shipped")]
    NotPaid { status: &'static str },
    #[error("an order holds at most {MAX_LINES} lines")]
    TooManyLines,
    #[error("the same SKU {sku} appears twice in the new order")]
    DuplicateSku { sku: String },
    #[error("line {sku} would hold {quantity} units; at most {MAX_LINE_QUANTITY} per line")]
    LineQuantityTooLarge { sku: String, quantity: u32 },
    #[error("{sku} is on the order at {existing} cents a unit, not {given}")]
    PriceMismatch {
        sku: String,
        existing: i64,
        given: i64,
    },
    #[error("{sku} is not on the order")]
    SkuNotOnOrder { sku: String },
    #[error("an order without lines cannot be paid")]
    NothingToPay,
    #[error("the payment of {given} cents does not equal the order total of {expected} cents")]
    AmountMismatch { expected: i64, given: i64 },
}

/// cqrs-es needs its `DomainEvent` on the event type; the `events` crate stays free of cqrs-es.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderDomainEvent(pub OrderEvent);

impl DomainEvent for OrderDomainEvent {
    fn event_type(&self) -> String {
        self.0.event_type().to_string()
    }
    fn event_version(&self) -> String {
        self.0.schema_version().to_string()
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = ORDER_AGGREGATE;
    type Command = OrderCommand;
    type Event = OrderDomainEvent;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(OrderDomainEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.evolve(&event.0);
    }
}

impl Order {
    /// The business rules: which events a command causes in the current state.
    pub fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        match command {
            C::PlaceOrder {
                order_id,
                customer_id,
                currency,
                items,
            } => {
                if self.status != OrderStatus::New {
                    return Err(OrderError::AlreadyPlaced);
                }
                if items.len() > MAX_LINES {
                    return Err(OrderError::TooManyLines);
                }
                let mut seen = std::collections::HashSet::new();
                for line in &items {
                    if !seen.insert(line.sku.as_str()) {
                        return Err(OrderError::DuplicateSku {
                            sku: line.sku.clone(),
                        });
                    }
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id,
                    customer_id,
                    currency,
                    items,
                }])
            }
            C::AddItem(line) => {
                self.require_open()?;
                match self.items.iter().find(|l| l.sku == line.sku) {
                    Some(existing) => {
                        if existing.unit_price_cents != line.unit_price_cents {
                            return Err(OrderError::PriceMismatch {
                                sku: line.sku,
                                existing: existing.unit_price_cents,
                                given: line.unit_price_cents,
                            });
                        }
                        let quantity = existing.quantity.saturating_add(line.quantity);
                        if quantity > MAX_LINE_QUANTITY {
                            return Err(OrderError::LineQuantityTooLarge {
                                sku: line.sku,
                                quantity,
                            });
                        }
                    }
                    None if self.items.len() >= MAX_LINES => return Err(OrderError::TooManyLines),
                    None => {}
                }
                Ok(vec![OrderEvent::ItemAdded(line)])
            }
            C::RemoveItem { sku } => {
                self.require_open()?;
                if !self.items.iter().any(|l| l.sku == sku) {
                    return Err(OrderError::SkuNotOnOrder { sku });
                }
                Ok(vec![OrderEvent::ItemRemoved { sku }])
            }
            C::RecordPayment {
                amount_cents,
                payment_ref,
            } => {
                self.require_open()?;
                if self.items.is_empty() {
                    return Err(OrderError::NothingToPay);
                }
                let expected = self.total_cents();
                if amount_cents != expected {
                    return Err(OrderError::AmountMismatch {
                        expected,
                        given: amount_cents,
                    });
                }
                Ok(vec![OrderEvent::PaymentRecorded {
                    amount_cents,
                    payment_ref,
                }])
            }
            C::ShipOrder {
                carrier,
                tracking_number,
            } => match self.status {
                OrderStatus::Paid => Ok(vec![OrderEvent::OrderShipped {
                    carrier,
                    tracking_number,
                }]),
                OrderStatus::New => Err(OrderError::NotPlaced),
                status => Err(OrderError::NotPaid {
                    status: status.as_str(),
                }),
            },
            C::CancelOrder { reason } => match self.status {
                OrderStatus::Open | OrderStatus::Paid => {
                    Ok(vec![OrderEvent::OrderCancelled { reason }])
                }
                OrderStatus::New => Err(OrderError::NotPlaced),
                status => Err(OrderError::NotCancellable {
                    status: status.as_str(),
                }),
            },
        }
    }

    fn require_open(&self) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::Open => Ok(()),
            OrderStatus::New => Err(OrderError::NotPlaced),
            status => Err(OrderError::NotOpen {
                status: status.as_str(),
            }),
        }
    }

    /// Fold one event into the state.
    pub fn evolve(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer_id,
                currency,
                items,
            } => {
                self.order_id = Some(*order_id);
                self.customer_id = Some(*customer_id);
                self.currency = currency.clone();
                self.items = items.clone();
                self.status = OrderStatus::Open;
            }
            OrderEvent::ItemAdded(line) => {
                match self.items.iter_mut().find(|l| l.sku == line.sku) {
                    Some(existing) => existing.quantity += line.quantity,
                    None => self.items.push(line.clone()),
                }
            }
            OrderEvent::ItemRemoved { sku } => self.items.retain(|l| &l.sku != sku),
            OrderEvent::PaymentRecorded { .. } => self.status = OrderStatus::Paid,
            OrderEvent::OrderShipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}
