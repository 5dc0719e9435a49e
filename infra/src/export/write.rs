//! Writing exported events: JSON lines (each envelope exactly as stored) or Parquet (one row per
//! event, the envelope's fields as columns, the payload as JSON text, plus the Kafka partition,
//! offset and record time).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use events::EventEnvelope;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// One event read from the topic.
pub struct Record<'a> {
    pub envelope: &'a EventEnvelope,
    /// The record's value, as stored.
    pub raw: &'a [u8],
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record time (milliseconds since the epoch).
    pub timestamp_ms: Option<i64>,
}

/// Where exported events go.
pub trait EventSink {
    fn write(&mut self, record: &Record<'_>) -> anyhow::Result<()>;
    /// Bytes written so far (buffered rows of a Parquet file not counted yet).
    fn bytes(&self) -> u64;
}

/// A writer that counts what passes through it.
pub struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Counting<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, count: 0 }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// JSON lines: each envelope exactly as stored in Kafka, one per line.
pub struct JsonlSink<W: Write> {
    out: Counting<W>,
}

impl<W: Write> JsonlSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Counting::new(out),
        }
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<W> {
        self.out.flush()?;
        Ok(self.out.into_inner())
    }
}

impl<W: Write> EventSink for JsonlSink<W> {
    fn write(&mut self, record: &Record<'_>) -> anyhow::Result<()> {
        self.out.write_all(record.raw)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.out.count()
    }
}

/// Rows buffered before they are handed to the Parquet writer as one record batch.
const BATCH_ROWS: usize = 8_192;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 65_536;

/// The Arrow schema of an export's Parquet files.
pub fn schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let utc = || Some(Arc::from("UTC"));
    Arc::new(Schema::new(vec![
        text("event_id"),
        text("tenant_id"),
        text("aggregate_type"),
        text("aggregate_id"),
        Field::new("sequence", DataType::Int64, false),
        text("event_type"),
        Field::new("schema_version", DataType::Int32, false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, utc()),
            false,
        ),
        text("command_id"),
        text("correlation_id"),
        text("causation_id"),
        Field::new("traceparent", DataType::Utf8, true),
        Field::new("tracestate", DataType::Utf8, true),
        text("payload"),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new(
            "kafka_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, utc()),
            true,
        ),
    ]))
}

#[derive(Default)]
struct Columns {
    event_id: StringBuilder,
    tenant_id: StringBuilder,
    aggregate_type: StringBuilder,
    aggregate_id: StringBuilder,
    sequence: Int64Builder,
    event_type: StringBuilder,
    schema_version: Int32Builder,
    occurred_at: TimestampMicrosecondBuilder,
    command_id: StringBuilder,
    correlation_id: StringBuilder,
    causation_id: StringBuilder,
    traceparent: StringBuilder,
    tracestate: StringBuilder,
    payload: StringBuilder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
    kafka_timestamp: TimestampMillisecondBuilder,
    rows: usize,
}

impl Columns {
    fn push(&mut self, r: &Record<'_>) {
        let e = r.envelope;
        self.event_id.append_value(e.event_id.to_string());
        self.tenant_id.append_value(&e.tenant_id);
        self.aggregate_type.append_value(&e.aggregate_type);
        self.aggregate_id.append_value(e.aggregate_id.to_string());
        self.sequence
            .append_value(i64::try_from(e.sequence).unwrap_or(i64::MAX));
        self.event_type.append_value(&e.event_type);
        self.schema_version
            .append_value(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
        self.occurred_at
            .append_value(e.occurred_at.timestamp_micros());
        self.command_id
            .append_value(e.metadata.command_id.to_string());
        self.correlation_id.append_value(&e.metadata.correlation_id);
        self.causation_id.append_value(&e.metadata.causation_id);
        self.traceparent
            .append_option(e.metadata.traceparent.as_deref());
        self.tracestate
            .append_option(e.metadata.tracestate.as_deref());
        self.payload
            .append_value(serde_json::to_string(&e.payload).unwrap_or_default());
        self.kafka_partition.append_value(r.partition);
        self.kafka_offset.append_value(r.offset);
        self.kafka_timestamp.append_option(r.timestamp_ms);
        self.rows += 1;
    }

    fn batch(&mut self, schema: &Arc<Schema>) -> anyhow::Result<RecordBatch> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.tenant_id.finish()),
            Arc::new(self.aggregate_type.finish()),
            Arc::new(self.aggregate_id.finish()),
            Arc::new(self.sequence.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.schema_version.finish()),
            Arc::new(self.occurred_at.finish().with_timezone("UTC")),
            Arc::new(self.command_id.finish()),
            Arc::new(self.correlation_id.finish()),
            Arc::new(self.causation_id.finish()),
            Arc::new(self.traceparent.finish()),
            Arc::new(self.tracestate.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.kafka_partition.finish()),
            Arc::new(self.kafka_offset.finish()),
            Arc::new(self.kafka_timestamp.finish().with_timezone("UTC")),
        ];
        RecordBatch::try_new(schema.clone(), columns).context("building a record batch")
    }
}

/// A Parquet file (Snappy-compressed), written as rows arrive.
pub struct ParquetSink<W: Write + Send> {
    schema: Arc<Schema>,
    columns: Columns,
    writer: ArrowWriter<Counting<W>>,
}

impl<W: Write + Send> ParquetSink<W> {
    pub fn new(out: W) -> anyhow::Result<Self> {
        let schema = schema();
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("cqrs-backend export {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(Counting::new(out), schema.clone(), Some(properties))
            .context("starting a Parquet file")?;
        Ok(Self {
            schema,
            columns: Columns::default(),
            writer,
        })
    }

    fn flush_rows(&mut self) -> anyhow::Result<()> {
        if self.columns.rows > 0 {
            let batch = self.columns.batch(&self.schema)?;
            self.writer.write(&batch).context("writing Parquet rows")?;
        }
        Ok(())
    }

    /// Write the buffered rows and the footer; returns the output.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.flush_rows()?;
        let out = self
            .writer
            .into_inner()
            .context("finishing the Parquet file")?;
        Ok(out.into_inner())
    }
}

impl<W: Write + Send> EventSink for ParquetSink<W> {
    fn write(&mut self, record: &Record<'_>) -> anyhow::Result<()> {
        self.columns.push(record);
        if self.columns.rows >= BATCH_ROWS {
            self.flush_rows()?;
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.writer.inner().count()
    }
}

/// A part file being written into memory, in either format.
pub enum PartBuffer {
    Jsonl(JsonlSink<Vec<u8>>),
    Parquet(Box<ParquetSink<Vec<u8>>>),
}

impl PartBuffer {
    pub fn new(format: super::Format) -> anyhow::Result<Self> {
        Ok(match format {
            super::Format::Jsonl => PartBuffer::Jsonl(JsonlSink::new(Vec::new())),
            super::Format::Parquet => PartBuffer::Parquet(Box::new(ParquetSink::new(Vec::new())?)),
        })
    }

    pub fn finish(self) -> anyhow::Result<Vec<u8>> {
        match self {
            PartBuffer::Jsonl(s) => s.finish(),
            PartBuffer::Parquet(s) => s.finish(),
        }
    }
}

impl EventSink for PartBuffer {
    fn write(&mut self, record: &Record<'_>) -> anyhow::Result<()> {
        match self {
            PartBuffer::Jsonl(s) => s.write(record),
            PartBuffer::Parquet(s) => s.write(record),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            PartBuffer::Jsonl(s) => s.bytes(),
            PartBuffer::Parquet(s) => s.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{EventMetadata, OrderEvent};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn envelope(sequence: u64) -> EventEnvelope {
        let event = OrderEvent::OrderCancelled {
            reason: format!("#{sequence}"),
        };
        EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            tenant_id: "acme".into(),
            aggregate_type: "order".into(),
            aggregate_id: uuid::Uuid::now_v7(),
            sequence,
            event_type: event.event_type().into(),
            schema_version: 1,
            occurred_at: chrono::Utc::now(),
            metadata: EventMetadata::default(),
            payload: event.to_payload(),
        }
    }

    #[test]
    fn parquet_files_hold_one_row_per_event_with_the_envelope_as_columns() {
        let mut sink = ParquetSink::new(Vec::new()).unwrap();
        let n = BATCH_ROWS + 10;
        for i in 0..n {
            let e = envelope(i as u64 + 1);
            let raw = e.to_json();
            sink.write(&Record {
                envelope: &e,
                raw: &raw,
                partition: 2,
                offset: i as i64,
                timestamp_ms: Some(1_700_000_000_000),
            })
            .unwrap();
        }
        let bytes = sink.finish().unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), n as i64);
        let names: Vec<String> = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        assert_eq!(names.len(), schema().fields().len());
        assert!(names.contains(&"payload".to_string()));
        assert!(names.contains(&"kafka_offset".to_string()));
    }

    #[test]
    fn json_lines_are_the_stored_envelopes() {
        let mut sink = JsonlSink::new(Vec::new());
        let e = envelope(1);
        let raw = e.to_json();
        sink.write(&Record {
            envelope: &e,
            raw: &raw,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        })
        .unwrap();
        assert_eq!(sink.bytes(), raw.len() as u64 + 1);
        let out = sink.finish().unwrap();
        assert_eq!(EventEnvelope::from_json(&out[..out.len() - 1]).unwrap(), e);
    }
}
