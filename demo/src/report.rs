//! The table the demo prints every few seconds: the edges as the collector sees them, and for
//! `checkout` each instance's weight, its reason, and the share of traffic it really got.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use wayfinder_api::topology::{Edge, InstancesResponse, TopologyResponse};
use wayfinder_api::weights::ServiceWeights;

/// A client of the collector's query API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// The query API at `base` (`http://127.0.0.1:16686`).
    pub fn new(base: impl Into<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Api {
            base: base.into(),
            http,
        })
    }

    /// `GET path`; `None` for a 404.
    async fn get_or_none<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            anyhow::bail!("GET {path}: {status}");
        }
        Ok(Some(response.json().await?))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_or_none(path)
            .await?
            .ok_or_else(|| anyhow::anyhow!("GET {path}: 404 Not Found"))
    }

    /// `GET /api/v1/topology?window=…`.
    pub async fn topology(&self, window: &str) -> anyhow::Result<TopologyResponse> {
        self.get(&format!("/api/v1/topology?window={window}")).await
    }

    /// `GET /api/v1/weights/{service}`; `None` while the collector has none.
    pub async fn weights(&self, service: &str) -> anyhow::Result<Option<ServiceWeights>> {
        self.get_or_none(&format!("/api/v1/weights/{service}"))
            .await
    }

    /// `POST /api/v1/sql`.
    pub async fn sql(&self, sql: &str) -> anyhow::Result<wayfinder_api::sql::SqlResponse> {
        let response = self
            .http
            .post(format!("{}/api/v1/sql", self.base))
            .json(&wayfinder_api::sql::SqlRequest {
                sql: sql.to_owned(),
            })
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("POST /api/v1/sql: {status}: {}", response.text().await?);
        }
        Ok(response.json().await?)
    }

    /// The instances that said `down`, from the registry's `health_events` table.
    pub async fn departed(&self) -> anyhow::Result<Vec<String>> {
        let answer = self
            .sql(
                "SELECT DISTINCT instance_id FROM health_events \
                 WHERE status = 'down' ORDER BY instance_id",
            )
            .await?;
        Ok(answer
            .rows
            .iter()
            .filter_map(|row| row.first().and_then(|v| v.as_str()).map(str::to_owned))
            .collect())
    }

    /// `GET /api/v1/instances`.
    pub async fn instances(&self) -> anyhow::Result<InstancesResponse> {
        self.get("/api/v1/instances").await
    }
}

/// One `checkout` instance's line.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceLine {
    /// `checkout-3`.
    pub instance: String,
    /// The collector's weight, if it has one yet.
    pub weight: Option<f64>,
    /// The weight's reason.
    pub reason: String,
    /// The share of `checkout`'s calls this instance served since the last table.
    pub share: f64,
}

/// The p99 in milliseconds an edge shows: the server's view, else the client's.
fn p99(edge: &Edge) -> Option<f64> {
    edge.latency_ms
        .server
        .or(edge.latency_ms.client)
        .map(|latency| latency.p99)
}

/// The edges part of the table.
pub fn edges_table(topology: &TopologyResponse) -> String {
    let mut edges: Vec<&Edge> = topology.edges.iter().collect();
    edges.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<38} {:>9} {:>8} {:>9}",
        format!("edges (last {}s)", topology.window_seconds),
        "rate/s",
        "errors",
        "p99 ms"
    );
    for edge in edges {
        let name = format!(
            "{} → {} ({})",
            edge.source, edge.target, edge.connection_type
        );
        let errors = if edge.requests == 0 {
            0.0
        } else {
            edge.errors as f64 / edge.requests as f64 * 100.0
        };
        let p99 = p99(edge).map_or_else(|| "-".to_owned(), |p| format!("{p:.1}"));
        let _ = writeln!(
            out,
            "  {name:<38} {:>9.1} {:>7.1}% {p99:>9}",
            edge.rate_per_sec, errors
        );
    }
    out
}

/// The `checkout` lines: weights from the collector, shares from what each instance served
/// (`served` since the last table, by instance id).
pub fn instance_lines(
    weights: Option<&ServiceWeights>,
    served: &BTreeMap<String, u64>,
) -> Vec<InstanceLine> {
    let total: u64 = served.values().sum();
    served
        .iter()
        .map(|(instance, count)| {
            let endpoint = weights.and_then(|w| {
                w.endpoints
                    .iter()
                    .find(|endpoint| &endpoint.instance_id == instance)
            });
            InstanceLine {
                instance: instance.clone(),
                weight: endpoint.map(|e| e.weight),
                reason: endpoint.map_or_else(|| "no weight yet".to_owned(), |e| e.reason.clone()),
                share: if total == 0 {
                    0.0
                } else {
                    *count as f64 / total as f64
                },
            }
        })
        .collect()
}

/// The `checkout` part of the table; `slow` names the instances the demo slowed or broke.
pub fn instances_table(lines: &[InstanceLine], faulty: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<20} {:>8}  {:<28} {:>14}",
        "checkout instance", "weight", "reason", "traffic share"
    );
    for line in lines {
        let name = if faulty.contains(&line.instance) {
            format!("{} (faulty)", line.instance)
        } else {
            line.instance.clone()
        };
        let weight = line
            .weight
            .map_or_else(|| "-".to_owned(), |w| format!("{w:.3}"));
        let reason: String = line.reason.chars().take(28).collect();
        let _ = writeln!(
            out,
            "  {name:<20} {weight:>8}  {reason:<28} {:>13.1}%",
            line.share * 100.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wayfinder_api::weights::{Endpoint, EndpointLatency};

    fn endpoint(instance: &str, weight: f64, reason: &str) -> Endpoint {
        Endpoint {
            instance_id: instance.to_owned(),
            address: None,
            weight,
            health: "passing".to_owned(),
            latency_ms: EndpointLatency {
                p50: None,
                p90: None,
                p99: None,
                ewma: None,
            },
            error_rate: 0.0,
            requests_per_sec: 0.0,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn shares_are_what_each_instance_served_and_weights_are_the_collectors() {
        let weights = ServiceWeights {
            service: "checkout".to_owned(),
            version: 7,
            generated_at: String::new(),
            ttl_ms: 15_000,
            endpoints: vec![
                endpoint("checkout-1", 0.6, "latency"),
                endpoint("checkout-3", 0.1, "slow"),
            ],
        };
        let served = BTreeMap::from([
            ("checkout-1".to_owned(), 90),
            ("checkout-2".to_owned(), 90),
            ("checkout-3".to_owned(), 20),
        ]);
        let lines = instance_lines(Some(&weights), &served);
        // (instance, weight, reason, share, why)
        let rows = [
            (
                "checkout-1",
                Some(0.6),
                "latency",
                0.45,
                "a weighted instance",
            ),
            (
                "checkout-2",
                None,
                "no weight yet",
                0.45,
                "served, but not in the weights yet",
            ),
            ("checkout-3", Some(0.1), "slow", 0.10, "the slow one"),
        ];
        for ((instance, weight, reason, share, why), line) in rows.into_iter().zip(&lines) {
            assert_eq!(line.instance, instance, "{why}");
            assert_eq!(line.weight, weight, "{why}");
            assert_eq!(line.reason, reason, "{why}");
            assert!((line.share - share).abs() < 1e-9, "{why}: {}", line.share);
        }
        assert_eq!(lines.len(), 3);
        let table = instances_table(&lines, &["checkout-3".to_owned()]);
        assert!(table.contains("checkout-3 (faulty)"), "{table}");
        assert!(table.contains("10.0%"), "{table}");
    }

    #[test]
    fn nothing_served_is_a_zero_share_not_a_division_by_zero() {
        let served = BTreeMap::from([("checkout-1".to_owned(), 0)]);
        let lines = instance_lines(None, &served);
        assert_eq!(lines[0].share, 0.0);
        assert_eq!(lines[0].weight, None);
    }
}
