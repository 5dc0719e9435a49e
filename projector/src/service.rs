//! The long-running service: one consumer per (projection, generation) in use, kept in line with
//! the `projections` registry, plus the ops endpoints and the lag gauge.
//!
//! On start every selected projection is registered (generation 1 on first sight, agreed on by
//! LWT) and its tables made to exist. Then, every second, the registry rows are read: a consumer
//! runs for each projection's active generation and for the generation being rebuilt; when a
//! rebuild switches generations, the consumer of the retired one is stopped and the one of the
//! new generation simply carries on, from that generation's stored offsets. A consumer that died
//! is started again on the next tick. On shutdown every consumer finishes its batch, writes its
//! offsets and leaves its group.
//!
//! Operators' control ([`crate::control`]) is read in the same tick, before any consumer is
//! started: a paused projection gets its consumers stopped and none started, on every instance and
//! across restarts; each instance then writes its heartbeat (consuming or not, and which pause it
//! stopped for). The HTTP port serves, besides `/healthz`, `/readyz` and `/metrics`, the control
//! routes of [`crate::control_http`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use infra::http::{cql_check, install_metrics, kafka_check, ops_routes, track_metrics, Readiness};
use infra::Settings;
use scylla::client::session::Session;

use crate::consumer::{self, Shared, WorkerHandle};
use crate::control::{self, ControlStore, Gate};
use crate::control_http::{self, ControlApp};
use crate::control_ops::Controller;
use crate::projections::{self, Projection};
use crate::registry::Registry;
use crate::topic::{DeadLetters, TopicInfo};

/// How often the registry is read for generation changes.
const REGISTRY_POLL: Duration = Duration::from_secs(1);
/// How often the lag gauge is refreshed.
const LAG_REFRESH: Duration = Duration::from_secs(5);

/// The projections this instance runs: `settings.projector.projections`, or all when empty.
pub fn selected(names: &[String]) -> anyhow::Result<Vec<Arc<dyn Projection>>> {
    if names.is_empty() {
        return Ok(projections::all());
    }
    names
        .iter()
        .map(|name| {
            projections::by_name(name).ok_or_else(|| {
                let known: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
                anyhow::anyhow!("unknown projection {name:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// Run the projector until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let projections = selected(&settings.projector.projections)?;
    tokio::pin!(shutdown);
    let session = tokio::select! {
        session = connect(&settings) => session,
        () = &mut shutdown => return Ok(()),
    };

    // Kafka clients are created (not connected) here: only a bad configuration fails.
    let topic = TopicInfo::new(&settings.kafka)?;
    let dead_letters = DeadLetters::new(&settings.kafka)?;
    let readiness = Readiness::new(vec![
        ("cql", cql_check(session.clone())),
        ("kafka", kafka_check(settings.kafka.clone())),
    ]);
    let controller = Controller::new(settings.clone(), session.clone())
        .await
        .context("preparing projection control (has `stack-admin migrate` run?)")?;
    let control_store = controller.store.clone();
    let (auth, auth_task) = control_http::load_auth(&settings);
    let app = ops_routes(readiness, install_metrics())
        .merge(control_http::router(ControlApp { controller, auth }))
        .fallback(infra::http::fallback)
        .layer(axum::middleware::from_fn(track_metrics))
        .layer(axum::middleware::from_fn(infra::http::correlation_id));
    let listener = tokio::net::TcpListener::bind(&settings.projector.addr)
        .await
        .with_context(|| format!("binding {}", settings.projector.addr))?;
    let local_addr = listener.local_addr()?;
    let instance = control::instance_id(&local_addr.to_string());
    tracing::info!(addr = %local_addr, %instance, "ops and control endpoints listening");
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });

    let registry = Registry::new(session.clone(), &settings.cql.keyspace);
    for projection in &projections {
        match registry.ensure(projection.as_ref()).await {
            Ok(state) => tracing::info!(
                projection = projection.name(),
                active_generation = state.active_generation,
                building_generation = ?state.building_generation,
                state = %state.state,
                "projection ready"
            ),
            // The registry loop below tries again every second.
            Err(err) => tracing::warn!(
                projection = projection.name(),
                error = %format!("{err:#}"),
                "registering the projection failed; retrying"
            ),
        }
    }
    let lag = tokio::spawn(crate::metrics::refresh_lag(
        registry.clone(),
        projections.clone(),
        topic,
        settings.kafka.topic.clone(),
        LAG_REFRESH,
    ));
    // Export jobs from the durable queue (crate::jobs), unless APP_JOBS__WORKER=false.
    let job_worker = crate::jobs::spawn(&settings, session.clone()).await;
    let shared = Arc::new(Shared {
        dead_letters,
        settings,
        session,
    });

    let mut workers: BTreeMap<(&'static str, i32), WorkerHandle> = BTreeMap::new();
    let control = Control {
        store: control_store,
        instance,
        gates: projections
            .iter()
            .map(|p| (p.name(), Arc::new(Gate::default())))
            .collect(),
    };
    let mut tick = tokio::time::interval(REGISTRY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => reconcile(&shared, &registry, &control, &projections, &mut workers).await,
        }
    }

    if let Some(job_worker) = job_worker {
        job_worker.stop().await;
    }
    tracing::info!(consumers = workers.len(), "stopping consumers");
    for result in futures::future::join_all(workers.into_values().map(WorkerHandle::stop)).await {
        if let Err(err) = result {
            tracing::error!(error = %format!("{err:#}"), "consumer ended with an error");
        }
    }
    lag.abort();
    auth_task.abort();
    for projection in &projections {
        // Gone: a reset need not wait for this instance's lease to run out.
        let name = projection.name();
        if let Err(err) = control.store.heartbeat_gone(name, &control.instance).await {
            tracing::debug!(projection = name, error = %format!("{err:#}"), "removing the heartbeat failed");
        }
    }
    let _ = http_stop.send(());
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => bail!("ops endpoints: {err}"),
        Err(err) => bail!("ops endpoints task: {err}"),
    }
    tracing::info!("projector stopped");
    Ok(())
}

/// Connect to the keyspace, waiting for the database as long as it takes.
async fn connect(settings: &Settings) -> Arc<Session> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match infra::cql::connect_keyspace(&settings.cql).await {
            Ok(session) => return session,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_in_ms = backoff.as_millis() as u64, "CQL not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What this instance knows of operators' control.
struct Control {
    store: ControlStore,
    instance: String,
    gates: BTreeMap<&'static str, Arc<Gate>>,
}

/// Read the control state of `name` into its gate: `None` when it cannot be read (then nothing
/// is started, and running consumers hold their offsets writes once the fence runs out).
async fn read_control(control: &Control, name: &str) -> Option<control::ControlState> {
    let gate = control.gates.get(name)?;
    let read_at = Instant::now();
    let state = match control.store.state(name).await {
        Ok(state) => state,
        Err(err) => {
            tracing::debug!(projection = name, error = %format!("{err:#}"), "reading the control state failed");
            return None;
        }
    };
    let skips = match control.store.skips(name).await {
        Ok(skips) => skips,
        Err(err) => {
            tracing::debug!(projection = name, error = %format!("{err:#}"), "reading the skips failed");
            return None;
        }
    };
    let skips = skips.into_iter().map(|s| (s.partition, s.offset)).collect();
    gate.update(state.paused, skips, read_at);
    Some(state)
}

/// Bring the running consumers in line with the registry and the control state.
async fn reconcile(
    shared: &Arc<Shared>,
    registry: &Registry,
    control: &Control,
    projections: &[Arc<dyn Projection>],
    workers: &mut BTreeMap<(&'static str, i32), WorkerHandle>,
) {
    for projection in projections {
        let name = projection.name();
        let state = match registry.get(name).await {
            Ok(Some(state)) => state,
            Ok(None) => match registry.ensure(projection.as_ref()).await {
                Ok(state) => state,
                Err(err) => {
                    tracing::warn!(projection = name, error = %format!("{err:#}"), "registering the projection failed");
                    continue;
                }
            },
            Err(err) => {
                // Keep what runs: the consumers wait for the database themselves.
                tracing::debug!(projection = name, error = %format!("{err:#}"), "reading the registry failed");
                continue;
            }
        };
        let Some(control_state) = read_control(control, name).await else {
            continue;
        };
        control::set_paused_gauge(name, control_state.paused);
        if control_state.paused {
            let running: Vec<_> = workers
                .keys()
                .filter(|(n, _)| *n == name)
                .copied()
                .collect();
            for key in running {
                if let Some(worker) = workers.remove(&key) {
                    tracing::info!(
                        projection = name,
                        generation = key.1,
                        changed_by = control_state.changed_by.as_deref().unwrap_or(""),
                        reason = control_state.reason.as_deref().unwrap_or(""),
                        "projection paused; stopping its consumer"
                    );
                    if let Err(err) = worker.stop().await {
                        tracing::error!(projection = name, generation = key.1, error = %format!("{err:#}"), "consumer ended with an error");
                    }
                }
            }
            if let Err(err) = control
                .store
                .heartbeat(name, &control.instance, false, control_state.changed_at)
                .await
            {
                tracing::debug!(projection = name, error = %format!("{err:#}"), "writing the heartbeat failed");
            }
            continue;
        }
        let gate = control.gates.get(name).cloned();
        let wanted = state.generations();

        let retired: Vec<_> = workers
            .keys()
            .filter(|(n, g)| *n == name && !wanted.contains(g))
            .copied()
            .collect();
        for key in retired {
            if let Some(worker) = workers.remove(&key) {
                tracing::info!(
                    projection = name,
                    generation = key.1,
                    active_generation = state.active_generation,
                    "generation retired; stopping its consumer"
                );
                if let Err(err) = worker.stop().await {
                    tracing::error!(projection = name, generation = key.1, error = %format!("{err:#}"), "consumer ended with an error");
                }
            }
        }

        for generation in wanted {
            if let Some(worker) = workers.get(&(name, generation)) {
                if !worker.is_finished() {
                    continue;
                }
                if let Some(worker) = workers.remove(&(name, generation)) {
                    if let Err(err) = worker.stop().await {
                        tracing::error!(projection = name, generation, error = %format!("{err:#}"), "consumer failed; restarting it");
                    }
                }
            }
            match registry.tables_exist(projection.as_ref(), generation).await {
                Ok(true) => {}
                // The active generation's tables are this service's to create (a first start
                // that died half-way); a generation being built gets them from its rebuild,
                // before it is claimed, so wait until they are visible here.
                Ok(false) if generation == state.active_generation => {
                    if let Err(err) = registry
                        .create_tables(projection.as_ref(), generation)
                        .await
                    {
                        tracing::warn!(projection = name, generation, error = %format!("{err:#}"), "creating tables failed");
                        continue;
                    }
                }
                Ok(false) | Err(_) => continue,
            }
            match consumer::spawn_gated(
                shared.clone(),
                projection.clone(),
                generation,
                gate.clone(),
            )
            .await
            {
                Ok(worker) => {
                    workers.insert((name, generation), worker);
                }
                Err(err) => {
                    tracing::warn!(projection = name, generation, error = %format!("{err:#}"), "starting the consumer failed; retrying")
                }
            }
        }
        let consuming = workers.keys().any(|(n, _)| *n == name);
        if let Err(err) = control
            .store
            .heartbeat(name, &control.instance, consuming, None)
            .await
        {
            tracing::debug!(projection = name, error = %format!("{err:#}"), "writing the heartbeat failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_selection_means_every_projection() {
        assert_eq!(selected(&[]).unwrap().len(), projections::all().len());
    }

    #[test]
    fn an_unknown_projection_is_refused_by_name() {
        let err = selected(&["orders".into(), "nope".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"nope\""), "{err}");
    }
}
