//! The order aggregate: `open` → `paid` → `shipped`, and `open`/`paid` → `cancelled`.
//!
//! `handle` checks the business rules of docs/api.md against the current state and emits events;
//! `apply` folds an event into the state. Field-level validation (ranges, formats) happens at the
//! HTTP edge before a command is built; the rules here are the ones that depend on state.

mod aggregate;
#[cfg(test)]
mod tests;

pub use aggregate::{
    Order, OrderCommand, OrderDomainEvent, OrderError, OrderStatus, MAX_LINES, MAX_LINE_QUANTITY,
};
