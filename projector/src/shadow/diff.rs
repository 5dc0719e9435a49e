//! Comparing two generations of a projection's tables, row by row, whatever the tables are.
//!
//! The primary key and the other columns of each table are read from `system_schema.columns`, so
//! nothing here knows a projection's columns. Each table is scanned in slices of the token ring
//! (`token(<partition key>) > lo AND … <= hi`), both generations of one slice side by side, so
//! memory holds one slice of one table at a time and progress is slices done. Rows are matched
//! by their whole primary key and every other column present in both generations is compared
//! (a column only one generation has is named in the table's summary, not compared).
//!
//! The scan yields *candidates*: keys whose rows differed while both tables were read. Each is
//! then read again by its key from both generations ([`Differ::classify`]): that read decides the
//! difference reported, so a live row that moved on during the scan and that the shadow has
//! caught up with since is not reported.
//!
//! No column is left out of the comparison: every column of the read models is derived from the
//! events (`updated_at` of `order_detail` is the time the last event *occurred*, `envelope` of
//! `order_events` the record as consumed), none holds the time a row was written. Write times
//! (`WRITETIME`) are not compared.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, SecondsFormat};
use futures::TryStreamExt;
use indicatif::ProgressBar;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::projections::{qualified, table};

/// Slices of the token ring each table is scanned in.
pub const RANGES: u32 = 64;

/// How one table of the two generations compares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDiff {
    pub table: String,
    pub only_in_live: u64,
    pub only_in_shadow: u64,
    pub differing: u64,
    pub identical: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_only_in_live: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_only_in_shadow: Vec<String>,
}

/// What kind of difference a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OnlyInLive,
    OnlyInShadow,
    Differing,
}

/// One row that is not the same in both generations: a line of the differences file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// The table's base name (without the generation suffix).
    pub table: String,
    /// The primary key's columns.
    pub key: Map<String, Value>,
    pub kind: Kind,
    /// The live generation's row (every column), if it has one.
    pub live: Option<Value>,
    /// The shadow generation's row, if it has one.
    pub shadow: Option<Value>,
    /// The columns whose values differ (`differing` rows only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// A key whose rows differed during the scan.
#[derive(Debug, Clone)]
pub struct Candidate {
    table: usize,
    key: Vec<CqlValue>,
    /// Sorts candidates deterministically within a table.
    order: String,
}

impl Candidate {
    pub fn table(&self) -> usize {
        self.table
    }
}

/// What reading a candidate again by its key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Identical,
    /// Neither generation has the row any more.
    Gone,
    Differs(Difference),
}

/// The columns of one table: the primary key (partition key, then clustering columns, each in
/// key order), then every other column by name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Columns {
    names: Vec<String>,
    partition_len: usize,
    key_len: usize,
}

impl Columns {
    fn keys(&self) -> &[String] {
        &self.names[..self.key_len]
    }
}

/// One generation's table of a pair: absent when that generation does not have it.
struct Side {
    columns: Option<Columns>,
    scan: Option<PreparedStatement>,
    point: Option<PreparedStatement>,
}

struct Pair {
    base: String,
    keys: Vec<String>,
    /// Indices (live, shadow) of the columns both have, and their names.
    compared: Vec<(usize, usize, String)>,
    live: Side,
    shadow: Side,
    only_in_live: Vec<String>,
    only_in_shadow: Vec<String>,
}

/// Compares the live and the shadow generation of a projection's tables.
pub struct Differ {
    session: Arc<Session>,
    pairs: Vec<Pair>,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> anyhow::Result<Option<Columns>> {
    let rows = session
        .query_unpaged(
            "SELECT column_name, kind, position FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .with_context(|| format!("reading the columns of {keyspace}.{table}"))?
        .into_rows_result()?;
    let mut partition = Vec::new();
    let mut clustering = Vec::new();
    let mut others = Vec::new();
    for row in rows.rows::<(String, String, i32)>()? {
        let (name, kind, position) = row?;
        match kind.as_str() {
            "partition_key" => partition.push((position, name)),
            "clustering" => clustering.push((position, name)),
            _ => others.push(name),
        }
    }
    if partition.is_empty() {
        return Ok(None);
    }
    partition.sort();
    clustering.sort();
    others.sort();
    let partition_len = partition.len();
    let key_len = partition_len + clustering.len();
    let names = partition
        .into_iter()
        .chain(clustering)
        .map(|(_, name)| name)
        .chain(others)
        .collect();
    Ok(Some(Columns {
        names,
        partition_len,
        key_len,
    }))
}

async fn side(session: &Session, keyspace: &str, table: &str) -> anyhow::Result<Side> {
    let Some(columns) = columns(session, keyspace, table).await? else {
        return Ok(Side {
            columns: None,
            scan: None,
            point: None,
        });
    };
    let list = columns
        .names
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ");
    let token = columns.names[..columns.partition_len]
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ");
    let key = columns
        .keys()
        .iter()
        .map(|n| format!("{} = ?", quote(n)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut scan = session
        .prepare(format!(
            "SELECT {list} FROM {keyspace}.{table} WHERE token({token}) > ? AND token({token}) <= ?"
        ))
        .await
        .with_context(|| format!("preparing the scan of {table}"))?;
    scan.set_is_idempotent(true);
    scan.set_page_size(1000);
    let mut point = session
        .prepare(format!("SELECT {list} FROM {keyspace}.{table} WHERE {key}"))
        .await
        .with_context(|| format!("preparing the key read of {table}"))?;
    point.set_is_idempotent(true);
    Ok(Side {
        columns: Some(columns),
        scan: Some(scan),
        point: Some(point),
    })
}

/// `n` slices `(lo, hi]` covering the Murmur3 token ring (whose tokens are `i64::MIN + 1` up to
/// `i64::MAX`).
pub fn token_ranges(n: u32) -> Vec<(i64, i64)> {
    let n = i128::from(n.max(1));
    let min = i128::from(i64::MIN);
    let max = i128::from(i64::MAX);
    let width = (max - min) / n;
    let bound = |i: i128| -> i64 {
        let value = if i >= n { max } else { min + i * width };
        i64::try_from(value).unwrap_or(i64::MAX)
    };
    (0..n).map(|i| (bound(i), bound(i + 1))).collect()
}

type Rows = HashMap<String, (Vec<CqlValue>, Vec<Option<CqlValue>>)>;

impl Differ {
    /// The tables `bases` of generations `live` and `shadow` in `keyspace`.
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        bases: &[&str],
        live: i32,
        shadow: i32,
    ) -> anyhow::Result<Self> {
        let mut pairs = Vec::new();
        for base in bases {
            let live_side = side(&session, keyspace, &table(base, live)).await?;
            let shadow_side = side(&session, keyspace, &table(base, shadow)).await?;
            let (live_cols, shadow_cols) =
                (live_side.columns.as_ref(), shadow_side.columns.as_ref());
            let keys = match (live_cols, shadow_cols) {
                (Some(l), Some(s)) if l.keys() != s.keys() => bail!(
                    "{base}: the primary key differs between the generations ({:?} live, {:?} shadow); \
                     rows cannot be matched",
                    l.keys(),
                    s.keys()
                ),
                (Some(c), _) | (None, Some(c)) => c.keys().to_vec(),
                (None, None) => bail!(
                    "{base}: neither {} nor {} exists",
                    qualified(keyspace, base, live),
                    qualified(keyspace, base, shadow)
                ),
            };
            let mut compared = Vec::new();
            let mut only_in_live = Vec::new();
            let mut only_in_shadow = Vec::new();
            if let (Some(l), Some(s)) = (live_cols, shadow_cols) {
                for (li, name) in l.names.iter().enumerate().skip(l.key_len) {
                    match s.names.iter().position(|n| n == name) {
                        Some(si) => compared.push((li, si, name.clone())),
                        None => only_in_live.push(name.clone()),
                    }
                }
                only_in_shadow = s.names[s.key_len..]
                    .iter()
                    .filter(|n| !l.names.contains(n))
                    .cloned()
                    .collect();
            }
            pairs.push(Pair {
                base: (*base).to_string(),
                keys,
                compared,
                live: live_side,
                shadow: shadow_side,
                only_in_live,
                only_in_shadow,
            });
        }
        Ok(Self { session, pairs })
    }

    /// The tables compared, by base name.
    pub fn tables(&self) -> Vec<String> {
        self.pairs.iter().map(|p| p.base.clone()).collect()
    }

    /// An empty summary per table (the columns only one generation has filled in).
    pub fn summaries(&self) -> Vec<TableDiff> {
        self.pairs
            .iter()
            .map(|p| TableDiff {
                table: p.base.clone(),
                columns_only_in_live: p.only_in_live.clone(),
                columns_only_in_shadow: p.only_in_shadow.clone(),
                ..TableDiff::default()
            })
            .collect()
    }

    /// Scan every table of both generations: rows identical per table, and the keys whose rows
    /// differed. The bar advances by one per slice of a table.
    pub async fn scan(
        &self,
        ranges: u32,
        bar: &ProgressBar,
    ) -> anyhow::Result<(Vec<u64>, Vec<Candidate>)> {
        let slices = token_ranges(ranges);
        bar.set_length((self.pairs.len() * slices.len()) as u64);
        bar.set_position(0);
        let mut identical = vec![0u64; self.pairs.len()];
        let mut candidates = Vec::new();
        for (index, pair) in self.pairs.iter().enumerate() {
            bar.set_message(format!("diffing {}", pair.base));
            let found_before = candidates.len();
            for &(lo, hi) in &slices {
                let (mut live, shadow) = futures::try_join!(
                    self.slice(pair, &pair.live, lo, hi),
                    self.slice(pair, &pair.shadow, lo, hi),
                )?;
                for (order, (key, shadow_row)) in shadow {
                    match live.remove(&order) {
                        Some((_, live_row))
                            if differing_columns(pair, &live_row, &shadow_row).is_empty() =>
                        {
                            identical[index] += 1;
                        }
                        _ => candidates.push(Candidate {
                            table: index,
                            key,
                            order,
                        }),
                    }
                }
                candidates.extend(live.into_iter().map(|(order, (key, _))| Candidate {
                    table: index,
                    key,
                    order,
                }));
                bar.inc(1);
            }
            tracing::info!(
                table = %pair.base,
                identical = identical[index],
                candidates = candidates.len() - found_before,
                "table scanned"
            );
        }
        candidates.sort_by(|a, b| (a.table, &a.order).cmp(&(b.table, &b.order)));
        Ok((identical, candidates))
    }

    async fn slice(&self, pair: &Pair, side: &Side, lo: i64, hi: i64) -> anyhow::Result<Rows> {
        let (Some(statement), Some(columns)) = (&side.scan, &side.columns) else {
            return Ok(Rows::new());
        };
        let mut rows = Rows::new();
        let mut stream = self
            .session
            .execute_iter(statement.clone(), (lo, hi))
            .await
            .with_context(|| format!("scanning {}", pair.base))?
            .rows_stream::<Row>()?;
        while let Some(row) = stream
            .try_next()
            .await
            .with_context(|| format!("scanning {}", pair.base))?
        {
            let (key, values) = split(pair, columns, row)?;
            rows.insert(format!("{key:?}"), (key, values));
        }
        Ok(rows)
    }

    /// Read a candidate's rows again by key from both generations and say how they compare.
    pub async fn classify(&self, candidate: &Candidate) -> anyhow::Result<Outcome> {
        let Some(pair) = self.pairs.get(candidate.table) else {
            bail!("no table {}", candidate.table);
        };
        let (live, shadow) = futures::try_join!(
            self.point(pair, &pair.live, &candidate.key),
            self.point(pair, &pair.shadow, &candidate.key),
        )?;
        let kind = match (&live, &shadow) {
            (None, None) => return Ok(Outcome::Gone),
            (Some(_), None) => Kind::OnlyInLive,
            (None, Some(_)) => Kind::OnlyInShadow,
            (Some(l), Some(s)) => {
                if differing_columns(pair, l, s).is_empty() {
                    return Ok(Outcome::Identical);
                }
                Kind::Differing
            }
        };
        let columns = match (&live, &shadow) {
            (Some(l), Some(s)) => differing_columns(pair, l, s),
            _ => Vec::new(),
        };
        let key = pair
            .keys
            .iter()
            .zip(&candidate.key)
            .map(|(name, value)| (name.clone(), json(value)))
            .collect();
        let render = |side: &Side, row: Option<Vec<Option<CqlValue>>>| {
            let columns = side.columns.as_ref()?;
            let mut values: Vec<Option<CqlValue>> =
                candidate.key.iter().cloned().map(Some).collect();
            values.extend(row?);
            Some(object(&columns.names, &values))
        };
        Ok(Outcome::Differs(Difference {
            table: pair.base.clone(),
            key,
            kind,
            live: render(&pair.live, live),
            shadow: render(&pair.shadow, shadow),
            columns,
        }))
    }

    /// The non-key values of the row with `key`, if the side has one.
    async fn point(
        &self,
        pair: &Pair,
        side: &Side,
        key: &[CqlValue],
    ) -> anyhow::Result<Option<Vec<Option<CqlValue>>>> {
        let (Some(statement), Some(columns)) = (&side.point, &side.columns) else {
            return Ok(None);
        };
        let row = self
            .session
            .execute_unpaged(statement, key.to_vec())
            .await
            .with_context(|| format!("reading a row of {} by key", pair.base))?
            .into_rows_result()?
            .maybe_first_row::<Row>()?;
        match row {
            Some(row) => Ok(Some(split(pair, columns, row)?.1)),
            None => Ok(None),
        }
    }
}

/// A row as its key values and its other values.
fn split(
    pair: &Pair,
    columns: &Columns,
    row: Row,
) -> anyhow::Result<(Vec<CqlValue>, Vec<Option<CqlValue>>)> {
    let mut values = row.columns;
    let rest = values.split_off(columns.key_len.min(values.len()));
    let key: Option<Vec<CqlValue>> = values.into_iter().collect();
    match key {
        Some(key) if key.len() == columns.key_len => Ok((key, rest)),
        _ => bail!("a row of {} without its whole primary key", pair.base),
    }
}

/// The compared columns whose values differ between a live and a shadow row (non-key values).
fn differing_columns(
    pair: &Pair,
    live: &[Option<CqlValue>],
    shadow: &[Option<CqlValue>],
) -> Vec<String> {
    let key_len = pair.keys.len();
    pair.compared
        .iter()
        .filter(|(li, si, _)| live.get(li - key_len) != shadow.get(si - key_len))
        .map(|(_, _, name)| name.clone())
        .collect()
}

fn object(names: &[String], values: &[Option<CqlValue>]) -> Value {
    Value::Object(
        names
            .iter()
            .zip(values)
            .map(|(name, value)| (name.clone(), value.as_ref().map_or(Value::Null, json)))
            .collect(),
    )
}

/// A CQL value as JSON: numbers as numbers, timestamps as RFC 3339 (milliseconds, UTC), dates
/// as `YYYY-MM-DD`, UUIDs and text as strings, blobs as hex, collections as arrays.
pub fn json(value: &CqlValue) -> Value {
    match value {
        CqlValue::Ascii(s) | CqlValue::Text(s) => Value::String(s.clone()),
        CqlValue::Boolean(b) => Value::Bool(*b),
        CqlValue::Blob(bytes) => Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        CqlValue::Counter(c) => Value::from(c.0),
        CqlValue::Date(d) => {
            let days = i64::from(d.0) - (1i64 << 31);
            NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(days)))
                .map_or_else(|| Value::from(days), |date| Value::String(date.to_string()))
        }
        CqlValue::Double(f) => Value::from(*f),
        CqlValue::Float(f) => Value::from(f64::from(*f)),
        CqlValue::Int(i) => Value::from(*i),
        CqlValue::BigInt(i) => Value::from(*i),
        CqlValue::SmallInt(i) => Value::from(*i),
        CqlValue::TinyInt(i) => Value::from(*i),
        CqlValue::Timestamp(t) => DateTime::from_timestamp_millis(t.0).map_or_else(
            || Value::from(t.0),
            |at| Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        ),
        CqlValue::Uuid(u) => Value::String(u.to_string()),
        CqlValue::Timeuuid(u) => Value::String(u.to_string()),
        CqlValue::Inet(ip) => Value::String(ip.to_string()),
        CqlValue::List(items) | CqlValue::Set(items) | CqlValue::Vector(items) => {
            Value::Array(items.iter().map(json).collect())
        }
        CqlValue::Map(entries) => Value::Array(
            entries
                .iter()
                .map(|(k, v)| Value::Array(vec![json(k), json(v)]))
                .collect(),
        ),
        CqlValue::Tuple(items) => Value::Array(
            items
                .iter()
                .map(|v| v.as_ref().map_or(Value::Null, json))
                .collect(),
        ),
        CqlValue::UserDefinedType { fields, .. } => Value::Object(
            fields
                .iter()
                .map(|(name, v)| (name.clone(), v.as_ref().map_or(Value::Null, json)))
                .collect(),
        ),
        CqlValue::Empty => Value::Null,
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_slices_cover_the_whole_ring_without_overlap() {
        let slices = token_ranges(64);
        assert_eq!(slices.len(), 64);
        assert_eq!(slices[0].0, i64::MIN);
        assert_eq!(slices[63].1, i64::MAX);
        for pair in slices.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
            assert!(pair[0].0 < pair[0].1);
        }
        assert_eq!(token_ranges(1), vec![(i64::MIN, i64::MAX)]);
    }

    #[test]
    fn cql_values_render_as_plain_json() {
        use scylla::value::{CqlDate, CqlTimestamp};
        assert_eq!(
            json(&CqlValue::Timestamp(CqlTimestamp(1_772_323_200_000))),
            Value::String("2026-03-01T00:00:00.000Z".into())
        );
        assert_eq!(
            json(&CqlValue::Date(CqlDate((1u32 << 31) + 1))),
            Value::String("1970-01-02".into())
        );
        assert_eq!(json(&CqlValue::BigInt(7)), Value::from(7));
        assert_eq!(
            json(&CqlValue::List(vec![CqlValue::Text("a".into())])),
            serde_json::json!(["a"])
        );
    }
}
