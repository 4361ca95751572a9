//! `wayfinder_instance_health{service,instance,status}` and the registry's counters.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{InstanceStatus, Registry};
use crate::metrics::Labels;

/// Encodes the registry's series at each scrape.
#[derive(Debug, Clone)]
pub struct RegistryMetrics(pub Arc<Registry>);

impl Collector for RegistryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (instances, (transitions, stale, dropped)) = self
            .0
            .with(|registry| (registry.instances(None), registry.counts()));
        // One series per instance and status, 1 for the status it has (as kube-state-metrics
        // does), so that `sum by (status)` counts instances and alerts can match a status.
        let mut family = encoder.encode_descriptor(
            "wayfinder_instance_health",
            "1 for the status each instance has, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for instance in &instances {
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
                "Instances not tracked because the registry was full",
                dropped,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        Ok(())
    }
}
