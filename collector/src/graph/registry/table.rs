//! The `health_events` SQL table: one row per state change of an instance.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, StringArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::Registry;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        text("service_name", false),
        text("instance_id", false),
        text("previous_status", true),
        text("status", false),
        text("reason", false),
        text("address", true),
        text("output", true),
    ]))
});

/// The schema of `health_events`.
pub(crate) fn health_events_schema() -> SchemaRef {
    SCHEMA.clone()
}

impl Registry {
    /// The transitions kept, as one batch of the `health_events` table (built again only after a
    /// transition).
    pub fn health_events(&self) -> Result<RecordBatch, ArrowError> {
        let version = self.with(super::InstanceRegistry::version);
        if let Some((cached, batch)) = &*self.table.lock()
            && *cached == version
        {
            return Ok(batch.clone());
        }
        let (version, batch) =
            self.with(|registry| build(registry).map(|batch| (registry.version(), batch)))?;
        *self.table.lock() = Some((version, batch.clone()));
        Ok(batch)
    }
}

fn build(registry: &super::InstanceRegistry) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = registry.transitions().collect();
    let time: Vec<i64> = rows
        .iter()
        .map(|t| {
            t.time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampNanosecondArray::from(time).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|t| &*t.service),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|t| &*t.instance_id),
        )),
        Arc::new(rows.iter().map(|t| t.previous).collect::<StringArray>()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|t| t.status))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|t| t.reason))),
        Arc::new(
            rows.iter()
                .map(|t| t.address.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|t| t.output.as_deref())
                .collect::<StringArray>(),
        ),
    ];
    RecordBatch::try_new(health_events_schema(), columns)
}
