//! `wayfinder_instance_health{service,instance,status}` and the registry's counters.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{InstanceStatus, Registry};
use crate::metrics::{Labels, MAX_INSTANCE_SERIES};

/// Encodes the registry's series at each scrape.
#[derive(Debug, Clone)]
pub(crate) struct RegistryMetrics(pub Arc<Registry>);

impl Collector for RegistryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (instances, (transitions, stale, dropped), (refused, conflicts, bytes, event_bytes)) =
            self.0.with(|registry| {
                (
                    registry.instances(None),
                    registry.counts(),
                    registry.guard_counts(),
                )
            });
        // One series per instance and status, 1 for the status it has (as kube-state-metrics
        // does), so that `sum by (status)` counts instances and alerts can match a status.
        let mut family = encoder.encode_descriptor(
            "wayfinder_instance_health",
            "1 for the status each instance has, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        // Bounded, as every per-instance family: the first instances by service and id.
        for instance in instances.iter().take(MAX_INSTANCE_SERIES) {
            for status in InstanceStatus::ALL {
                let labels = [
                    ("service", &*instance.service),
                    ("instance", &*instance.instance_id),
                    ("status", status.as_str()),
                ];
                ConstGauge::new(i64::from(instance.status == status))
                    .encode(family.encode_family(&Labels(&labels))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "wayfinder_health_transitions",
            "Changes of instance state, per status reached (removed included)",
            None,
            MetricType::Counter,
        )?;
        for (status, count) in transitions {
            ConstCounter::new(count).encode(family.encode_family(&[("status", status)])?)?;
        }
        for (name, help, value) in [
            (
                "wayfinder_health_stale_beats",
                "Heartbeats ignored because their seq was not newer than the last one",
                stale,
            ),
            (
                "wayfinder_registry_dropped_instances",
                "Instances not tracked because the registry was full (by count or by bytes)",
                dropped,
            ),
            (
                "wayfinder_health_refused_beats",
                "Heartbeats refused: from the future, with a TTL past --max-heartbeat-ttl, or from an incarnation that may not take over",
                refused,
            ),
            (
                "wayfinder_health_conflicts",
                "Takeovers undone because the incarnation they replaced beat again (two processes, or a stranger, claim one instance)",
                conflicts,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        for (name, help, value) in [
            (
                "wayfinder_registry_bytes",
                "Bytes of the registry's instances (names, addresses, outputs)",
                bytes,
            ),
            (
                "wayfinder_registry_event_bytes",
                "Bytes of the transitions kept for the health_events table",
                event_bytes,
            ),
            (
                "wayfinder_metrics_omitted_instances",
                "Instances left out of wayfinder_instance_health, past the first 10,000",
                instances.len().saturating_sub(MAX_INSTANCE_SERIES),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(family)?;
        }
        Ok(())
    }
}
