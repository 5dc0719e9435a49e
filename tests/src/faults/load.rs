//! The steady load: K clients, each working through orders of its own (place, add two items, pay),
//! every command with an `Idempotency-Key` and retried with the same key on 503, 5xx, a write
//! conflict, a dropped connection or a timeout, up to a bound; every acknowledged command read
//! back through query-api with `min_version` (read-your-writes).
//!
//! The [`Journal`] records every HTTP attempt (sent, answered, status), what each order reached
//! (highest step sent, highest version acknowledged), and every answer no correct system gives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

/// Commands per order: place, add an item, add another, pay.
pub const STEPS: u64 = 4;

/// The request of step `step` (1-based) of an order: (path, body).
pub fn command(order: Uuid, customer: Uuid, step: u64) -> (String, Value) {
    match step {
        1 => (
            "/v1/orders".into(),
            json!({"order_id": order, "customer_id": customer, "currency": "EUR",
                   "items": [{"sku": "FIRST", "quantity": 1, "unit_price_cents": 100}]}),
        ),
        2 => (
            format!("/v1/orders/{order}/items"),
            json!({"sku": "A", "quantity": 1, "unit_price_cents": 250}),
        ),
        3 => (
            format!("/v1/orders/{order}/items"),
            json!({"sku": "B", "quantity": 2, "unit_price_cents": 300}),
        ),
        _ => (
            format!("/v1/orders/{order}/payments"),
            json!({"amount_cents": 950, "payment_ref": format!("faults-{order}")}),
        ),
    }
}

/// The event type of each sequence of an order, as the script makes them.
pub fn event_type(sequence: u64) -> &'static str {
    match sequence {
        1 => "OrderPlaced",
        2 | 3 => "ItemAdded",
        _ => "PaymentRecorded",
    }
}

/// The view of an order at `version`: (status, total_cents, sorted (sku, quantity, unit price)).
pub fn expected_view(version: u64) -> (&'static str, i64, Vec<(String, i64, i64)>) {
    let mut items = vec![("FIRST".to_string(), 1, 100)];
    if version >= 2 {
        items.push(("A".into(), 1, 250));
    }
    if version >= 3 {
        items.push(("B".into(), 2, 300));
    }
    items.sort();
    let total = items.iter().map(|(_, q, p)| q * p).sum();
    let status = if version >= 4 { "paid" } else { "open" };
    (status, total, items)
}

/// How `view` (a `GET /v1/orders/{id}` body) differs from what its version must show; `None`
/// when it shows exactly that.
pub fn view_difference(view: &Value, customer: Uuid) -> Option<String> {
    let version = view["version"].as_u64()?;
    if version == 0 || version > STEPS {
        return Some(format!("version {version} outside 1..={STEPS}"));
    }
    let (status, total, items) = expected_view(version);
    let mut got: Vec<(String, i64, i64)> = view["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["sku"].as_str().unwrap_or_default().to_string(),
                        i["quantity"].as_i64().unwrap_or(-1),
                        i["unit_price_cents"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    got.sort();
    let mut wrong = Vec::new();
    if view["status"] != status {
        wrong.push(format!("status {} (expected {status})", view["status"]));
    }
    if view["total_cents"] != total {
        wrong.push(format!("total {} (expected {total})", view["total_cents"]));
    }
    if got != items {
        wrong.push(format!("items {got:?} (expected {items:?})"));
    }
    if view["customer_id"] != customer.to_string() {
        wrong.push(format!("customer {}", view["customer_id"]));
    }
    (!wrong.is_empty()).then(|| format!("at version {version}: {}", wrong.join("; ")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    /// A read-your-writes read (`min_version`) of the load.
    Read,
}

/// Pseudo status: no answer within the client's timeout (15 s).
pub const TIMED_OUT: u16 = 1;
/// Pseudo status: the connection could not be made.
pub const NOT_CONNECTED: u16 = 2;
/// Pseudo status: the connection broke after the request was sent, before the answer was read.
pub const DROPPED: u16 = 3;

/// A status as the report shows it (`503`, or what kind of no-answer).
pub fn status_label(status: u16) -> String {
    match status {
        TIMED_OUT => "timeout".into(),
        NOT_CONNECTED => "not connected".into(),
        DROPPED => "connection dropped".into(),
        other => other.to_string(),
    }
}

/// An error with its causes (`reqwest::Error` shows only its own message).
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The pseudo status of a request that got no answer.
fn no_answer(error: &reqwest::Error) -> u16 {
    if error.is_timeout() {
        TIMED_OUT
    } else if error.is_connect() {
        NOT_CONNECTED
    } else {
        DROPPED
    }
}

/// One HTTP request of the load.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub kind: Kind,
    pub sent: Instant,
    pub answered: Instant,
    /// The HTTP status, or when no answer came one of [`TIMED_OUT`], [`NOT_CONNECTED`],
    /// [`DROPPED`].
    pub status: u16,
    /// A 2xx command; a read answered 200 at the version asked for or later.
    pub ok: bool,
}

/// What one order reached.
#[derive(Debug, Clone)]
pub struct OrderLog {
    pub customer: Uuid,
    /// The highest step sent (its command may or may not have been applied).
    pub started: u64,
    /// The highest version acknowledged (a 2xx answer); 0 before the placing is.
    pub acked: u64,
    /// When a command of the order was last sent.
    pub last_sent: Instant,
}

#[derive(Default)]
struct Inner {
    attempts: Vec<Attempt>,
    orders: HashMap<Uuid, OrderLog>,
    /// Orders in the order they were begun.
    order_ids: Vec<Uuid>,
    /// (time, what): answers no correct system gives.
    wrong_answers: Vec<(Instant, String)>,
    /// (time, error) of requests that got no answer, the first few hundred.
    transport_errors: Vec<(Instant, String)>,
    acked_commands: usize,
    gave_up: usize,
    read_timeouts: usize,
}

/// Everything the load did, shared by its clients.
#[derive(Default)]
pub struct Journal {
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Totals of a run's load.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub commands_sent: usize,
    pub commands_ok: usize,
    pub acked_commands: usize,
    pub orders: usize,
    pub gave_up: usize,
    pub read_timeouts: usize,
}

impl Journal {
    fn begin(&self, order: Uuid, customer: Uuid) {
        let mut inner = lock(&self.inner);
        inner.orders.insert(
            order,
            OrderLog {
                customer,
                started: 0,
                acked: 0,
                last_sent: Instant::now(),
            },
        );
        inner.order_ids.push(order);
    }

    fn sending(&self, order: Uuid, step: u64) {
        if let Some(log) = lock(&self.inner).orders.get_mut(&order) {
            log.started = log.started.max(step);
            log.last_sent = Instant::now();
        }
    }

    fn attempt(&self, attempt: Attempt) {
        lock(&self.inner).attempts.push(attempt);
    }

    fn transport_error(&self, what: String) {
        let mut inner = lock(&self.inner);
        if inner.transport_errors.len() < 500 {
            inner.transport_errors.push((Instant::now(), what));
        }
    }

    /// The errors of requests that got no answer at or after `since` (the first few hundred of
    /// the run are kept).
    pub fn transport_errors_since(&self, since: Instant) -> Vec<String> {
        lock(&self.inner)
            .transport_errors
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn acked(&self, order: Uuid, version: u64) {
        let mut inner = lock(&self.inner);
        inner.acked_commands += 1;
        if let Some(log) = inner.orders.get_mut(&order) {
            log.acked = log.acked.max(version);
        }
    }

    fn wrong(&self, what: String) {
        super::say(&format!("WRONG ANSWER: {what}"));
        lock(&self.inner).wrong_answers.push((Instant::now(), what));
    }

    /// Every attempt, in the order they were answered.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.inner).attempts.clone()
    }

    /// Attempts sent or answered at or after `since`.
    pub fn attempts_since(&self, since: Instant) -> Vec<Attempt> {
        lock(&self.inner)
            .attempts
            .iter()
            .filter(|a| a.answered >= since)
            .copied()
            .collect()
    }

    /// Every order begun, with what it reached.
    pub fn orders(&self) -> Vec<(Uuid, OrderLog)> {
        let inner = lock(&self.inner);
        inner
            .order_ids
            .iter()
            .filter_map(|id| inner.orders.get(id).map(|log| (*id, log.clone())))
            .collect()
    }

    pub fn wrong_answers_since(&self, since: Instant) -> Vec<String> {
        lock(&self.inner)
            .wrong_answers
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, w)| w.clone())
            .collect()
    }

    pub fn totals(&self) -> Totals {
        let inner = lock(&self.inner);
        let commands = inner.attempts.iter().filter(|a| a.kind == Kind::Command);
        Totals {
            commands_sent: commands.clone().count(),
            commands_ok: commands.filter(|a| a.ok).count(),
            acked_commands: inner.acked_commands,
            orders: inner.order_ids.len(),
            gave_up: inner.gave_up,
            read_timeouts: inner.read_timeouts,
        }
    }
}

/// Where and how the load runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub command_url: String,
    pub query_url: String,
    pub clients: usize,
    /// A pause between orders of one client.
    pub think: Duration,
    /// How long a command is retried (same key) before the client gives up on its order.
    pub retry_bound: Duration,
    /// How long a read-your-writes read is retried.
    pub read_bound: Duration,
}

/// The running load: stop it with [`Load::stop`].
pub struct Load {
    pub journal: Arc<Journal>,
    stopping: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(options: LoadOptions) -> anyhow::Result<Self> {
        let http = crate::authorized(
            &infra::Settings::load()?,
            reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(3)),
        )
        .build()?;
        let journal = Arc::new(Journal::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let options = Arc::new(options);
        let clients = (0..options.clients)
            .map(|_| {
                let client = Client {
                    http: http.clone(),
                    journal: journal.clone(),
                    stopping: stopping.clone(),
                    options: options.clone(),
                };
                tokio::spawn(client.run())
            })
            .collect();
        Ok(Self {
            journal,
            stopping,
            clients,
        })
    }

    /// Stop every client (a command being retried is given up) and wait for them.
    pub async fn stop(self) -> Arc<Journal> {
        self.stopping.store(true, Ordering::SeqCst);
        for client in self.clients {
            let _ = client.await;
        }
        self.journal
    }
}

enum Outcome {
    Acked,
    /// No acknowledgement within the bound, or the load stopping: the command may or may not
    /// have been applied, so the order is left there.
    GaveUp,
    /// An answer that ends the order (a wrong answer, recorded as such).
    Refused,
}

struct Client {
    http: reqwest::Client,
    journal: Arc<Journal>,
    stopping: Arc<AtomicBool>,
    options: Arc<LoadOptions>,
}

impl Client {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn run(self) {
        while !self.stopping() {
            let (order, customer) = (Uuid::now_v7(), Uuid::now_v7());
            self.journal.begin(order, customer);
            for step in 1..=STEPS {
                if self.stopping() {
                    break;
                }
                match self.command(order, customer, step).await {
                    Outcome::Acked => self.read_back(order, step).await,
                    Outcome::GaveUp => {
                        lock(&self.journal.inner).gave_up += 1;
                        break;
                    }
                    Outcome::Refused => break,
                }
            }
            if !self.options.think.is_zero() {
                tokio::time::sleep(self.options.think).await;
            }
        }
    }

    /// Send step `step` of the order until it is acknowledged, refused, or the bound passes.
    async fn command(&self, order: Uuid, customer: Uuid, step: u64) -> Outcome {
        let (path, body) = command(order, customer, step);
        let url = format!("{}{path}", self.options.command_url);
        let key = format!("faults-{order}-{step}");
        let first = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            self.journal.sending(order, step);
            let sent = Instant::now();
            let answer = async {
                let response = self
                    .http
                    .post(&url)
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let bytes = response.bytes().await?;
                let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                });
                Ok::<_, reqwest::Error>((status, body))
            }
            .await;
            let answered = Instant::now();
            let (status, reply) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    self.journal
                        .transport_error(format!("POST {path} (key {key}): {}", with_causes(&e)));
                    (no_answer(&e), Value::Null)
                }
            };
            let ok = (200..300).contains(&status);
            self.journal.attempt(Attempt {
                kind: Kind::Command,
                sent,
                answered,
                status,
                ok,
            });
            if ok {
                let version = reply["version"].as_u64();
                if version != Some(step) {
                    self.journal.wrong(format!(
                        "order {order} step {step}: answered {status} with version {version:?} \
                         (expected {step}): {reply}"
                    ));
                    return Outcome::Refused;
                }
                self.journal.acked(order, step);
                return Outcome::Acked;
            }
            let retryable = match status {
                TIMED_OUT | NOT_CONNECTED | DROPPED => true,
                409 => reply["type"] == "/problems/write-conflict",
                s => s >= 500,
            };
            if !retryable {
                self.journal.wrong(format!(
                    "order {order} step {step} (key {key}): answered {status}: {reply}"
                ));
                return Outcome::Refused;
            }
            if self.stopping() || first.elapsed() > self.options.retry_bound {
                return Outcome::GaveUp;
            }
            // Short waits rather than Retry-After (1 s and more): the gaps measured are the
            // system's, not the client's patience.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Read the order back at `version` or later through query-api, until it answers or the
    /// bound passes.
    async fn read_back(&self, order: Uuid, version: u64) {
        let url = format!(
            "{}/v1/orders/{order}?min_version={version}",
            self.options.query_url
        );
        let first = Instant::now();
        loop {
            let sent = Instant::now();
            let answer = async {
                let response = self.http.get(&url).send().await?;
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                Ok::<_, reqwest::Error>((status, body))
            }
            .await;
            let answered = Instant::now();
            let (status, body) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    self.journal
                        .transport_error(format!("GET /v1/orders/{order}: {}", with_causes(&e)));
                    (no_answer(&e), Value::Null)
                }
            };
            let seen = body["version"].as_u64().unwrap_or(0);
            let ok = status == 200 && seen >= version;
            self.journal.attempt(Attempt {
                kind: Kind::Read,
                sent,
                answered,
                status,
                ok,
            });
            if ok {
                return;
            }
            if status == 200 {
                self.journal.wrong(format!(
                    "order {order}: min_version={version} answered 200 at version {seen}"
                ));
                return;
            }
            if self.stopping() || first.elapsed() > self.options.read_bound {
                lock(&self.journal.inner).read_timeouts += 1;
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_pays_exactly_the_total_of_its_lines() {
        let (status, total, items) = expected_view(STEPS);
        assert_eq!(status, "paid");
        assert_eq!(items.len(), 3);
        let (_, body) = command(Uuid::nil(), Uuid::nil(), STEPS);
        assert_eq!(body["amount_cents"], total);
    }

    #[test]
    fn a_view_is_judged_against_its_own_version() {
        let customer = Uuid::now_v7();
        let view = json!({"version": 2, "status": "open", "total_cents": 350,
            "customer_id": customer.to_string(),
            "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 250},
                      {"sku": "FIRST", "quantity": 1, "unit_price_cents": 100}]});
        assert_eq!(view_difference(&view, customer), None);
        let mut wrong = view.clone();
        wrong["total_cents"] = json!(950);
        assert!(view_difference(&wrong, customer).is_some());
    }
}
