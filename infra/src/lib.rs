//! What every service shares to reach the outside world.
//!
//! Settings are read once into [`settings::Settings`]; [`telemetry`] installs the tracing subscriber;
//! [`kafka`] builds producers, consumers and the admin client with the project's delivery guarantees;
//! [`cql`] opens the CQL session and applies the versioned [`migrations`]; [`http`] holds the
//! problem+json error, the JSON extractor, health, readiness and metrics routes that both APIs and
//! the projector serve; [`export`] writes the event stream out for analysts.

pub mod auth;
pub mod cql;
pub mod export;
pub mod http;
pub mod kafka;
pub mod migrations;
pub mod settings;
pub mod telemetry;

pub use settings::Settings;

/// The memory allocator every binary of the project installs (`#[global_allocator] static
/// ALLOCATOR: infra::Allocator = infra::Allocator;`). The services allocate and free many small
/// objects per request and per event (JSON values, envelopes, driver buffers); a profile of the
/// projector spent ~30 % of its CPU in glibc's `malloc`/`free`, which mimalloc serves from
/// per-thread free lists.
pub use mimalloc::MiMalloc as Allocator;
