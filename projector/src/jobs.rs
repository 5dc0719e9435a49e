//! The job worker: runs export jobs from the durable queue (`infra::export::jobs`), inside the
//! projector process (`APP_JOBS__WORKER=false` turns it off; any number of instances may run it).
//!
//! An idle worker reads the queue every `APP_JOBS__POLL_MS`, takes the lease of a runnable job by
//! LWT (a queued job, or a running one whose lease expired: its worker died), and runs it:
//!
//! 1. the plan: the Kafka offsets of the window per partition, fixed once by the first worker
//!    (from the end offsets of `after_job`'s plan when given) and stored on the job;
//! 2. the parts: fixed slices of those offsets, each read, filtered to the job's tenant and
//!    filters, written whole to the object store, then recorded as a checkpoint (an LWT on the
//!    lease). A part written but not recorded (the worker died in between) is written again, to
//!    the same name with the same content, by whoever resumes: every event of the window is in
//!    the result exactly once;
//! 3. `manifest.json` beside the parts, then the job `succeeded`.
//!
//! While it works, the lease is renewed every third of `APP_JOBS__LEASE_MS` together with the
//! progress of the part in hand. A renewal or checkpoint that does not apply means the job was
//! cancelled (its files are then deleted) or the lease lost (another worker has it): the worker
//! stops. Failures that may pass (Kafka, CQL or the store unreachable) give the job back for a
//! later attempt; after [`MAX_ATTEMPTS`] attempts, or a request that cannot be done (an
//! `after_job` without a plan), the job fails with the error.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use infra::export::jobs::{Checkpoint, Job, JobState, JobStore, Lease, PartProgress, Plan, Queued};
use infra::export::manifest::{Manifest, MANIFEST_VERSION};
use infra::export::read::{self, Part};
use infra::export::store::{ExportStore, MANIFEST};
use infra::export::write::PartBuffer;
use infra::export::FileEntry;
use infra::Settings;
use scylla::client::session::Session;
use tokio::sync::watch;
use uuid::Uuid;

/// Attempts at a job before it is failed.
pub const MAX_ATTEMPTS: i32 = 10;
/// A queue entry whose job row is still missing after this long is dropped (its creation died).
const ORPHAN_AFTER: TimeDelta = TimeDelta::minutes(1);

/// The running worker.
pub struct JobWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl JobWorker {
    /// Stop after the part in hand is abandoned; the lease is given back so another worker
    /// resumes at once.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "job worker task failed");
        }
    }
}

/// Start the worker unless `APP_JOBS__WORKER=false`. A worker that cannot start (no store, no
/// job tables) logs why and is not started; the projections run regardless.
pub async fn spawn(settings: &Settings, session: Arc<Session>) -> Option<JobWorker> {
    if !settings.jobs.worker {
        tracing::info!("job worker off (APP_JOBS__WORKER=false)");
        return None;
    }
    let store = match ExportStore::open(&settings.jobs) {
        Ok(store) => store,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "job worker not started: export jobs stay queued until a worker with a store runs");
            return None;
        }
    };
    let jobs = match JobStore::new(
        session,
        &settings.cql.keyspace,
        &settings.cql.serial_consistency,
    )
    .await
    {
        Ok(jobs) => jobs,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "job worker not started (has `stack-admin migrate` run?)");
            return None;
        }
    };
    let owner = format!(
        "{}:{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "projector".into()),
        std::process::id(),
        Uuid::now_v7().simple()
    );
    tracing::info!(worker = %owner, store = %store.url(), lease_ms = settings.jobs.lease_ms, "job worker started");
    let (stop, stopped) = watch::channel(false);
    let worker = Worker {
        settings: settings.clone(),
        jobs,
        store,
        owner,
        stopped,
    };
    Some(JobWorker {
        stop,
        task: tokio::spawn(worker.run()),
    })
}

struct Worker {
    settings: Settings,
    jobs: JobStore,
    store: ExportStore,
    owner: String,
    stopped: watch::Receiver<bool>,
}

/// How a job run ended, short of success.
enum Halt {
    /// The lease was lost or the job cancelled: nothing more to do here.
    Lost,
    /// This worker is stopping: give the job back.
    Stopping,
    /// The job cannot be done.
    Fatal(anyhow::Error),
    /// It may work later.
    Retry(anyhow::Error),
}

impl From<anyhow::Error> for Halt {
    fn from(err: anyhow::Error) -> Self {
        Halt::Retry(err)
    }
}

impl Worker {
    fn lease(&self) -> TimeDelta {
        TimeDelta::milliseconds(self.settings.jobs.lease_ms.max(1_000) as i64)
    }

    fn stopping(&self) -> bool {
        *self.stopped.borrow()
    }

    async fn run(mut self) {
        let poll = Duration::from_millis(self.settings.jobs.poll_ms.max(50));
        loop {
            if self.stopping() {
                break;
            }
            match self.jobs.queued().await {
                Ok(queued) => {
                    for entry in queued {
                        if self.stopping() {
                            break;
                        }
                        if let Err(err) = self.consider(&entry).await {
                            tracing::warn!(job_id = %entry.job_id, error = %format!("{err:#}"), "looking at a queued job failed");
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %format!("{err:#}"), "reading the job queue failed")
                }
            }
            let mut stopped = self.stopped.clone();
            tokio::select! {
                _ = stopped.changed() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
        tracing::info!("job worker stopped");
    }

    /// Take and run `entry`'s job if it is runnable and nobody holds it.
    async fn consider(&mut self, entry: &Queued) -> anyhow::Result<()> {
        let Some(job) = self.jobs.get_serial(&entry.tenant, entry.job_id).await? else {
            if entry
                .queued_at
                .is_some_and(|at| Utc::now() - at > ORPHAN_AFTER)
            {
                tracing::info!(job_id = %entry.job_id, "dropping a queue entry whose job was never created");
                self.jobs.dequeue(entry.job_id).await?;
            }
            return Ok(());
        };
        if job.state.is_finished() {
            self.jobs.dequeue(job.id).await?;
            return Ok(());
        }
        // A job for another event topic (another deployment sharing the keyspace) is not ours.
        if !job.spec.topic.is_empty() && job.spec.topic != self.settings.kafka.topic {
            return Ok(());
        }
        let Some(lease) = self.jobs.take(&job, &self.owner, self.lease()).await? else {
            return Ok(());
        };
        let resumed = job.state == JobState::Running;
        if job.attempts >= MAX_ATTEMPTS {
            let error = job
                .error
                .clone()
                .unwrap_or_else(|| "too many attempts".into());
            self.jobs
                .finish(&lease, JobState::Failed, Some(&error))
                .await?;
            count_outcome("failed");
            return Ok(());
        }
        metrics::counter!("jobs_started_total", "kind" => "export", "resumed" => resumed.to_string())
            .increment(1);
        let span = tracing::info_span!("export job", job_id = %job.id, tenant = %job.tenant);
        let _entered = span.enter();
        tracing::info!(
            job_id = %job.id,
            tenant = %job.tenant,
            attempt = job.attempts + 1,
            resumed,
            parts_done = job.parts_done,
            "export job taken"
        );
        drop(_entered);
        self.execute(job, lease).await;
        Ok(())
    }

    /// Run a job under its lease to its end, whatever the end is.
    async fn execute(&mut self, job: Job, lease: Lease) {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let renewer = tokio::spawn(renew(
            self.jobs.clone(),
            lease.clone(),
            self.lease(),
            stop.clone(),
            progress.clone(),
        ));
        metrics::gauge!("jobs_running").increment(1.0);
        let result = self.work(&job, &lease, &stop, &progress).await;
        metrics::gauge!("jobs_running").decrement(1.0);
        renewer.abort();
        let (tenant, id) = (job.tenant.as_str(), job.id);
        match result {
            Ok(events) => {
                tracing::info!(job_id = %id, tenant, events, "export job succeeded");
                count_outcome("succeeded");
            }
            Err(Halt::Stopping) => {
                let _ = self
                    .jobs
                    .release(&lease, "the worker stopped", TimeDelta::zero())
                    .await;
                tracing::info!(job_id = %id, "export job given back: the worker is stopping");
            }
            Err(Halt::Lost) => match self.jobs.get_serial(tenant, id).await {
                Ok(Some(now)) if now.state == JobState::Cancelled => {
                    match self.store.delete_job(tenant, id).await {
                        Ok(files) => {
                            tracing::info!(job_id = %id, files, "export job cancelled; its files are deleted")
                        }
                        Err(err) => {
                            tracing::warn!(job_id = %id, error = %format!("{err:#}"), "export job cancelled; deleting its files failed")
                        }
                    }
                    let _ = self.jobs.dequeue(id).await;
                    count_outcome("cancelled");
                }
                _ => {
                    tracing::warn!(job_id = %id, "export job lease lost; another worker carries it on")
                }
            },
            Err(Halt::Fatal(err)) => {
                let error = format!("{err:#}");
                tracing::error!(job_id = %id, error = %error, "export job failed");
                if let Err(e) = self
                    .jobs
                    .finish(&lease, JobState::Failed, Some(&error))
                    .await
                {
                    tracing::warn!(job_id = %id, error = %format!("{e:#}"), "recording the failure failed");
                }
                count_outcome("failed");
            }
            Err(Halt::Retry(err)) => {
                let error = format!("{err:#}");
                let wait = TimeDelta::seconds(1i64 << job.attempts.clamp(0, 6));
                tracing::warn!(job_id = %id, error = %error, retry_in_s = wait.num_seconds(), "export job attempt failed; it will be retried");
                let _ = self.jobs.release(&lease, &error, wait).await;
            }
        }
    }

    /// Plan (or take the stored plan), write every part not yet checkpointed, then the manifest.
    async fn work(
        &self,
        job: &Job,
        lease: &Lease,
        stop: &Arc<AtomicBool>,
        progress: &Arc<Progress>,
    ) -> Result<u64, Halt> {
        let topic = self.settings.kafka.topic.clone();
        let consumer = Arc::new(read::consumer(&self.settings.kafka)?);
        let plan = match &job.plan {
            Some(plan) if plan.topic != topic => {
                return Err(Halt::Fatal(anyhow::anyhow!(
                    "the job was planned on topic {}, this worker reads {topic}",
                    plan.topic
                )))
            }
            Some(plan) => plan.clone(),
            None => {
                let plan = self.plan(job, consumer.clone()).await?;
                if !self.jobs.set_plan(lease, &plan, self.lease()).await? {
                    return Err(Halt::Lost);
                }
                tracing::info!(job_id = %job.id, parts = plan.parts().len(), records = plan.records(), "export job planned");
                plan
            }
        };
        let parts = plan.parts();
        let selection = job.spec.selection(&job.tenant);
        let format = job.spec.format;
        let mut checkpoint = Checkpoint {
            parts_done: job.parts_done,
            events: job.events,
            bytes: job.bytes,
            files: job.files.clone(),
        };
        let pause = Duration::from_millis(self.settings.jobs.part_pause_ms);
        for part in parts.iter().skip(job.parts_done.max(0) as usize) {
            if self.stopping() {
                return Err(Halt::Stopping);
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Halt::Lost);
            }
            let (bytes, written) = self
                .write_part(
                    *part,
                    &topic,
                    consumer.clone(),
                    &selection,
                    format,
                    stop,
                    progress,
                )
                .await?;
            let name = part.file_name(format);
            let size = bytes.len() as u64;
            if written > 0 {
                self.store
                    .put(&job.tenant, job.id, &name, bytes)
                    .await
                    .map_err(Halt::Retry)?;
                checkpoint.files.push(FileEntry {
                    name,
                    partition: part.range.partition,
                    from_offset: part.range.from_offset,
                    to_offset: part.range.to_offset,
                    events: written,
                    bytes: size,
                });
                checkpoint.events += written as i64;
                checkpoint.bytes += size as i64;
            }
            checkpoint.parts_done += 1;
            {
                // No renewal in between: it would add this part's events again to the totals.
                let _writes = progress.writes.lock().await;
                progress.events.store(0, Ordering::Relaxed);
                progress.bytes.store(0, Ordering::Relaxed);
                if !self
                    .jobs
                    .checkpoint(lease, &checkpoint, self.lease())
                    .await?
                {
                    return Err(Halt::Lost);
                }
            }
            metrics::counter!("jobs_exported_events_total", "format" => format.extension())
                .increment(written);
            tracing::debug!(job_id = %job.id, part = part.index, events = written, "part written");
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            job_id: Some(job.id),
            after_job: job.spec.after_job,
            format,
            selection,
            topic: plan.topic.clone(),
            partitions: plan.partitions.clone(),
            files: checkpoint.files.clone(),
            events: checkpoint.events.max(0) as u64,
            bytes: checkpoint.bytes.max(0) as u64,
            created_at: job.created_at,
            finished_at: Utc::now(),
        };
        self.store
            .put(&job.tenant, job.id, MANIFEST, manifest.to_json())
            .await
            .map_err(Halt::Retry)?;
        if !self.jobs.finish(lease, JobState::Succeeded, None).await? {
            return Err(Halt::Lost);
        }
        Ok(manifest.events)
    }

    /// The offsets the job covers: from `after_job`'s end offsets, or from the window's start.
    async fn plan(
        &self,
        job: &Job,
        consumer: Arc<rdkafka::consumer::BaseConsumer>,
    ) -> Result<Plan, Halt> {
        let topic = self.settings.kafka.topic.clone();
        let start = match job.spec.after_job {
            None => None,
            Some(previous) => {
                let before = self.jobs.get_serial(&job.tenant, previous).await?;
                match before.and_then(|b| b.plan.filter(|_| b.state == JobState::Succeeded)) {
                    Some(plan) if plan.topic == topic => Some(
                        plan.partitions
                            .iter()
                            .map(|r| (r.partition, r.to_offset))
                            .collect(),
                    ),
                    Some(plan) => {
                        return Err(Halt::Fatal(anyhow::anyhow!(
                            "after_job {previous} covered topic {}, not {topic}",
                            plan.topic
                        )))
                    }
                    None => {
                        return Err(Halt::Fatal(anyhow::anyhow!(
                            "after_job {previous} is not a succeeded export of this tenant"
                        )))
                    }
                }
            }
        };
        let (from, to) = (job.spec.from, job.spec.to);
        let part_records = self.settings.jobs.part_records.max(1);
        let partitions = tokio::task::spawn_blocking(move || {
            read::plan_ranges(&consumer, &topic, Some(from), Some(to), start.as_ref())
        })
        .await
        .context("planning task")??;
        Ok(Plan {
            topic: self.settings.kafka.topic.clone(),
            part_records,
            partitions,
            planned_at: Utc::now(),
        })
    }

    /// Read one part into memory; returns the file's bytes and its event count.
    #[allow(clippy::too_many_arguments)]
    async fn write_part(
        &self,
        part: Part,
        topic: &str,
        consumer: Arc<rdkafka::consumer::BaseConsumer>,
        selection: &infra::export::Selection,
        format: infra::export::Format,
        stop: &Arc<AtomicBool>,
        progress: &Arc<Progress>,
    ) -> Result<(Vec<u8>, u64), Halt> {
        let (topic, selection, lost, progress) = (
            topic.to_string(),
            selection.clone(),
            stop.clone(),
            progress.clone(),
        );
        let stopping = self.stopped.clone();
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, u64)> {
            let mut buffer = PartBuffer::new(format)?;
            // Stop reading when the lease is lost, the job cancelled or the worker stopping.
            let halt = AtomicBool::new(false);
            let report = read::read_range(
                &consumer,
                &topic,
                part.range,
                &selection,
                &mut buffer,
                &halt,
                &mut |report, bytes| {
                    progress
                        .events
                        .store(report.written as i64, Ordering::Relaxed);
                    progress.bytes.store(bytes as i64, Ordering::Relaxed);
                    if lost.load(Ordering::Relaxed) || *stopping.borrow() {
                        halt.store(true, Ordering::Relaxed);
                    }
                },
            )?;
            let bytes = buffer.finish()?;
            Ok((bytes, report.written))
        })
        .await
        .context("part task")?;
        match result {
            Ok(done) => Ok(done),
            Err(_) if self.stopping() => Err(Halt::Stopping),
            Err(_) if stop.load(Ordering::Relaxed) => Err(Halt::Lost),
            Err(err) => Err(Halt::Retry(err)),
        }
    }
}

/// The progress of the part in hand, and the lock that keeps a renewal (which records it) from
/// running between a checkpoint and the reset of these counters.
#[derive(Default)]
struct Progress {
    events: AtomicI64,
    bytes: AtomicI64,
    writes: tokio::sync::Mutex<()>,
}

/// Renew the lease every third of its length with the progress of the part in hand; raise `stop`
/// when a renewal does not apply (cancelled, or taken over) or the lease ran out unrenewed.
async fn renew(
    jobs: JobStore,
    lease: Lease,
    duration: TimeDelta,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) {
    let every = (duration / 3).to_std().unwrap_or(Duration::from_secs(5));
    let mut valid_until = Utc::now() + duration;
    loop {
        tokio::time::sleep(every).await;
        let renewed = {
            let _writes = progress.writes.lock().await;
            let part = PartProgress {
                events: progress.events.load(Ordering::Relaxed),
                bytes: progress.bytes.load(Ordering::Relaxed),
            };
            jobs.renew(&lease, duration, part).await
        };
        match renewed {
            Ok(true) => valid_until = Utc::now() + duration,
            Ok(false) => {
                tracing::info!(job_id = %lease.job_id, "the job was cancelled or its lease taken over; stopping");
                stop.store(true, Ordering::Relaxed);
                return;
            }
            Err(err) => {
                tracing::warn!(job_id = %lease.job_id, error = %format!("{err:#}"), "renewing the lease failed");
                if Utc::now() >= valid_until {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

fn count_outcome(outcome: &'static str) {
    metrics::counter!("jobs_total", "kind" => "export", "outcome" => outcome).increment(1);
}
