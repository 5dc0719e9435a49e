//! The tracing subscriber, built once per process.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::settings::Telemetry;

/// Install the global subscriber: JSON lines or human-readable, filtered by `RUST_LOG` or the setting.
pub fn init(settings: &Telemetry) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests building several apps) is harmless: the first subscriber stays.
    let _ = if settings.format == "json" {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init()
    } else {
        registry.with(fmt::layer().compact()).try_init()
    };
}
