//! `GET /metrics`: pools, volumes and operation statistics in the OpenMetrics
//! text format (the Prometheus exposition format Prometheus asks for first).
//!
//! One prometheus-client [`Collector`] builds every family at scrape time
//! from the service's in-memory records and its [`StatsSnapshot`], so no
//! metric objects live between scrapes and a deleted volume's series go with
//! it. Scrape cost: no syscall per unmounted volume (its size is in memory);
//! a statvfs and a read of /sys/block/<dev>/stat per mounted one; one
//! measure per pool, which the service caches for a second.
//!
//! Names follow Prometheus' conventions: base units (bytes, seconds),
//! `_total` on counters (added by the encoder), `_bytes` on sizes.

use std::collections::BTreeMap;
use std::fmt;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ballast_core::host::IoStats;
use ballast_core::stats::{StatsSnapshot, DURATION_BUCKETS};
use ballast_core::VolumeService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::rest::{ApiError, ApiState};

/// The reply's content type: OpenMetrics 1.0 text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Volume states always exported per pool (at 0 when none is in them), so a
/// dashboard's series do not come and go.
const STATES: [&str; 5] = ["creating", "available", "mounted", "resizing", "deleting"];

/// Prometheus metrics of pools, volumes and operations, in the OpenMetrics
/// text format.
///
/// Built on the blocking pool (it may statvfs mounted volumes).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub async fn serve_metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let text = crate::run_blocking(&state.service, |s| Ok(render(s))).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// The whole exposition, `# EOF` included.
pub fn render(service: &VolumeService) -> String {
    ServiceCollector::read(service).render()
}

/// One pool's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolFigures {
    pub name: String,
    pub driver: &'static str,
    /// None when the pool's backing storage could not be measured.
    pub capacity_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    pub provisioned_bytes: Option<u64>,
    pub exclusive_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    /// State → volumes in it.
    pub volumes: BTreeMap<&'static str, u64>,
}

/// One volume's figures; the live ones only when it is mounted here.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeFigures {
    pub name: String,
    pub pool: String,
    pub state: &'static str,
    pub size_bytes: u64,
    /// Used bytes of its own filesystem (mounted, not block, not dir).
    pub used_bytes: Option<u64>,
    /// Counters of its loop device (staged loop volumes).
    pub io: Option<IoStats>,
}

/// Everything one scrape exports, read once; [`Collector::encode`] only
/// formats it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCollector {
    pub version: &'static str,
    pub pools: Vec<PoolFigures>,
    pub volumes: Vec<VolumeFigures>,
    pub stats: StatsSnapshot,
    /// (group, "held" | "expired") → claims.
    pub claims: BTreeMap<(String, &'static str), u64>,
}

impl ServiceCollector {
    /// Read the service's figures: records from memory, live usage and I/O
    /// for mounted volumes only.
    pub fn read(service: &VolumeService) -> ServiceCollector {
        // Measuring a loop pool walks its images (tens of ms at 10,000
        // volumes); it runs beside the per-volume reads.
        let (mut pools, volumes) = std::thread::scope(|scope| {
            let pools = scope.spawn(|| read_pools(service));
            let volumes = read_volumes(service);
            // The measure only reads (a driver's usage, statvfs); a panic
            // there is a bug to surface, not to hide.
            let pools = pools.join().expect("the pool measure does not panic");
            (pools, volumes)
        });
        let index: BTreeMap<String, usize> = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        for (pool, state) in volumes.iter().map(|v| (&v.pool, v.state)) {
            if let Some(&i) = index.get(pool) {
                *pools[i].volumes.entry(state).or_default() += 1;
            }
        }
        let mut claims = BTreeMap::new();
        for c in service.list_claims(None).unwrap_or_default() {
            let state = if c.expired { "expired" } else { "held" };
            *claims.entry((c.claim.group.clone(), state)).or_default() += 1;
        }
        ServiceCollector {
            version: env!("CARGO_PKG_VERSION"),
            pools,
            volumes,
            stats: service.stats().snapshot(),
            claims,
        }
    }

    /// The exposition of these figures, `# EOF` included.
    pub fn render(self) -> String {
        let mut out = String::with_capacity(16 * 1024 + 128 * self.volumes.len());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding into a String cannot fail");
        out
    }

    fn encode_pools(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type Pick = fn(&PoolFigures) -> Option<u64>;
        let gauges: [(&str, &str, Pick); 5] = [
            (
                "ballast_pool_capacity_bytes",
                "What the pool can hold: its backing filesystem's free space plus what its images occupy.",
                |p| p.capacity_bytes,
            ),
            (
                "ballast_pool_used_bytes",
                "Bytes the pool's volumes and snapshots occupy on the backing filesystem.",
                |p| p.used_bytes,
            ),
            (
                "ballast_pool_provisioned_bytes",
                "Sum of the sizes of the pool's volumes and snapshots.",
                |p| p.provisioned_bytes,
            ),
            (
                "ballast_pool_exclusive_bytes",
                "What the pool's volumes and snapshots are charged: each its size, except copy-on-write snapshots and clones, the bytes they hold exclusively.",
                |p| p.exclusive_bytes,
            ),
            (
                "ballast_pool_available_bytes",
                "Bytes that can still be provisioned in the pool (capacity times overcommit ratio, less exclusive).",
                |p| p.available_bytes,
            ),
        ];
        for (name, help, pick) in gauges {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &self.pools {
                if let Some(v) = pick(p) {
                    let labels = [("pool", p.name.as_str()), ("driver", p.driver)];
                    m.encode_family(&labels)?.encode_gauge(&v)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "ballast_volumes",
            "Volumes by pool and state.",
            None,
            MetricType::Gauge,
        )?;
        for p in &self.pools {
            for (state, n) in &p.volumes {
                let labels = [("pool", p.name.as_str()), ("state", state)];
                m.encode_family(&labels)?.encode_gauge(n)?;
            }
        }
        // Watchers' counters: every pool at 0 until its first action.
        let counters = [
            (
                "ballast_pool_remediations",
                "Times the pool's watcher added capacity to it.",
                &self.stats.remediations,
            ),
            (
                "ballast_volume_autogrows",
                "Times a volume of the pool grew by itself (autogrow).",
                &self.stats.autogrows,
            ),
        ];
        for (name, help, counts) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            let mut all: BTreeMap<&str, u64> =
                self.pools.iter().map(|p| (p.name.as_str(), 0)).collect();
            for (pool, n) in counts {
                all.insert(pool, *n);
            }
            for (pool, n) in all {
                encode_counter(&mut m.encode_family(&[("pool", pool)])?, n)?;
            }
        }
        Ok(())
    }

    fn encode_volumes(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let mut m = enc.encode_descriptor(
            "ballast_volume_size_bytes",
            "The volume's provisioned size.",
            None,
            MetricType::Gauge,
        )?;
        for v in &self.volumes {
            m.encode_family(&labels(v))?.encode_gauge(&v.size_bytes)?;
        }
        let mut m = enc.encode_descriptor(
            "ballast_volume_used_bytes",
            "Bytes used in the filesystem of a mounted volume (statvfs).",
            None,
            MetricType::Gauge,
        )?;
        for v in &self.volumes {
            if let Some(used) = v.used_bytes {
                m.encode_family(&labels(v))?.encode_gauge(&used)?;
            }
        }
        type Pick = fn(&IoStats) -> u64;
        let io: [(&str, &str, Pick); 4] = [
            (
                "ballast_volume_read_bytes",
                "Bytes read from a mounted volume's loop device.",
                |s| s.read_bytes,
            ),
            (
                "ballast_volume_written_bytes",
                "Bytes written to a mounted volume's loop device.",
                |s| s.write_bytes,
            ),
            (
                "ballast_volume_reads",
                "Read operations completed on a mounted volume's loop device.",
                |s| s.read_ops,
            ),
            (
                "ballast_volume_writes",
                "Write operations completed on a mounted volume's loop device.",
                |s| s.write_ops,
            ),
        ];
        for (name, help, pick) in io {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for v in &self.volumes {
                if let Some(s) = &v.io {
                    encode_counter(&mut m.encode_family(&labels(v))?, pick(s))?;
                }
            }
        }
        Ok(())
    }

    fn encode_operations(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let mut m = enc.encode_descriptor(
            "ballast_operation_duration_seconds",
            "Duration of volume operations (failed ones included), by operation and driver.",
            None,
            MetricType::Histogram,
        )?;
        for ((op, driver), h) in &self.stats.durations {
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(h.buckets.iter().copied())
                .collect();
            let labels = [("operation", op.as_str()), ("driver", driver)];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_seconds,
                h.count,
                &buckets,
                None,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "ballast_operation_errors",
            "Failed volume operations, by operation, driver and error code.",
            None,
            MetricType::Counter,
        )?;
        for ((op, driver, code), n) in &self.stats.errors {
            let labels = [
                ("operation", op.as_str()),
                ("driver", driver),
                ("code", code),
            ];
            encode_counter(&mut m.encode_family(&labels)?, *n)?;
        }
        Ok(())
    }
}

fn read_pools(service: &VolumeService) -> Vec<PoolFigures> {
    // Each node exports its own pools; another node's are in its /metrics.
    service
        .list_pools()
        .into_iter()
        .filter(|p| p.is_on(service.node_id()))
        .map(|p| {
            let cap = service.pool_capacity(&p);
            if let Err(e) = &cap {
                tracing::debug!(pool = %p.name, error = %e, "metrics: cannot measure the pool");
            }
            let cap = cap.ok();
            PoolFigures {
                driver: p.driver.as_str(),
                capacity_bytes: cap.map(|c| c.capacity_bytes),
                used_bytes: cap.map(|c| c.used_bytes),
                provisioned_bytes: cap.map(|c| c.provisioned_bytes),
                exclusive_bytes: cap.map(|c| c.exclusive_bytes),
                available_bytes: cap.map(|c| c.available_bytes),
                volumes: STATES.iter().map(|s| (*s, 0)).collect(),
                name: p.name,
            }
        })
        .collect()
}

/// Sizes from memory; usage and I/O only for volumes mounted here.
fn read_volumes(service: &VolumeService) -> Vec<VolumeFigures> {
    service
        .list_volumes()
        .into_iter()
        .map(|v| {
            let staged = v.staging.is_some();
            let used_bytes = (staged && v.fs.is_some())
                .then(|| service.volume_usage(&v).map(|u| u.used_bytes))
                .flatten();
            let io = staged.then(|| service.volume_io(&v)).flatten();
            VolumeFigures {
                state: v.state.as_str(),
                size_bytes: v.size_bytes,
                used_bytes,
                io,
                name: v.name,
                pool: v.pool,
            }
        })
        .collect()
}

fn labels(v: &VolumeFigures) -> [(&'static str, &str); 2] {
    [("pool", v.pool.as_str()), ("volume", v.name.as_str())]
}

fn encode_counter(m: &mut MetricEncoder, n: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, u64, u64>(&n, None)
}

impl Collector for ServiceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut m = enc.encode_descriptor(
            "ballast_build_info",
            "The running ballast's version; always 1.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_family(&[("version", self.version)])?
            .encode_gauge(&1u64)?;
        self.encode_pools(&mut enc)?;
        self.encode_volumes(&mut enc)?;
        self.encode_operations(&mut enc)?;
        let mut m = enc.encode_descriptor(
            "ballast_claims",
            "Stateful identity claims, by group and state (held, expired).",
            None,
            MetricType::Gauge,
        )?;
        for ((group, state), n) in &self.claims {
            m.encode_family(&[("group", group.as_str()), ("state", *state)])?
                .encode_gauge(n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ballast_core::stats::{Operation, Stats};

    use super::*;

    fn collector() -> ServiceCollector {
        let stats = Stats::default();
        stats.observe(Operation::Create, "loop", Duration::from_millis(3), None);
        stats.observe(
            Operation::Create,
            "loop",
            Duration::from_secs(100),
            Some("driver"),
        );
        stats.record_remediation("fast");
        ServiceCollector {
            version: "1.2.3",
            pools: vec![
                PoolFigures {
                    name: "fast".into(),
                    driver: "loop",
                    capacity_bytes: Some(1000),
                    used_bytes: Some(100),
                    provisioned_bytes: Some(2000),
                    exclusive_bytes: Some(1200),
                    available_bytes: Some(0),
                    volumes: STATES
                        .iter()
                        .map(|s| (*s, 0))
                        .chain([("mounted", 1), ("available", 1)])
                        .collect(),
                },
                PoolFigures {
                    name: "gone".into(),
                    driver: "dir",
                    capacity_bytes: None,
                    used_bytes: None,
                    provisioned_bytes: None,
                    exclusive_bytes: None,
                    available_bytes: None,
                    volumes: STATES.iter().map(|s| (*s, 0)).collect(),
                },
            ],
            volumes: vec![
                VolumeFigures {
                    name: "idle".into(),
                    pool: "fast".into(),
                    state: "available",
                    size_bytes: 1 << 20,
                    used_bytes: None,
                    io: None,
                },
                VolumeFigures {
                    name: "busy".into(),
                    pool: "fast".into(),
                    state: "mounted",
                    size_bytes: 2 << 20,
                    used_bytes: Some(4096),
                    io: Some(IoStats {
                        read_ops: 1,
                        read_bytes: 512,
                        write_ops: 2,
                        write_bytes: 8192,
                    }),
                },
            ],
            stats: stats.snapshot(),
            claims: BTreeMap::from([(("es".to_string(), "held"), 2)]),
        }
    }

    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn figures_become_openmetrics_families() {
        let text = collector().render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let s = samples(&text);
        let get = |k: &str| {
            s.get(k)
                .unwrap_or_else(|| panic!("no sample {k} in:\n{text}"))
                .as_str()
        };
        assert_eq!(get(r#"ballast_build_info{version="1.2.3"}"#), "1");
        assert_eq!(
            get(r#"ballast_pool_capacity_bytes{pool="fast",driver="loop"}"#),
            "1000"
        );
        assert_eq!(
            get(r#"ballast_pool_provisioned_bytes{pool="fast",driver="loop"}"#),
            "2000"
        );
        assert_eq!(
            get(r#"ballast_pool_exclusive_bytes{pool="fast",driver="loop"}"#),
            "1200"
        );
        assert_eq!(get(r#"ballast_volumes{pool="fast",state="mounted"}"#), "1");
        assert_eq!(get(r#"ballast_volumes{pool="gone",state="deleting"}"#), "0");
        assert_eq!(
            get(r#"ballast_volume_size_bytes{pool="fast",volume="idle"}"#),
            "1048576"
        );
        assert_eq!(
            get(r#"ballast_volume_used_bytes{pool="fast",volume="busy"}"#),
            "4096"
        );
        assert_eq!(
            get(r#"ballast_volume_written_bytes_total{pool="fast",volume="busy"}"#),
            "8192"
        );
        assert_eq!(
            get(r#"ballast_volume_writes_total{pool="fast",volume="busy"}"#),
            "2"
        );
        assert_eq!(get(r#"ballast_pool_remediations_total{pool="fast"}"#), "1");
        assert_eq!(get(r#"ballast_pool_remediations_total{pool="gone"}"#), "0");
        assert_eq!(get(r#"ballast_volume_autogrows_total{pool="fast"}"#), "0");
        assert_eq!(get(r#"ballast_claims{group="es",state="held"}"#), "2");
        // Histogram buckets are cumulative and end with +Inf = count.
        let op = r#"operation="create",driver="loop""#;
        assert_eq!(
            get(&format!("ballast_operation_duration_seconds_count{{{op}}}")),
            "2"
        );
        assert_eq!(
            get(&format!(
                r#"ballast_operation_duration_seconds_bucket{{le="0.005",{op}}}"#
            )),
            "1"
        );
        assert_eq!(
            get(&format!(
                r#"ballast_operation_duration_seconds_bucket{{le="30.0",{op}}}"#
            )),
            "1"
        );
        assert_eq!(
            get(&format!(
                r#"ballast_operation_duration_seconds_bucket{{le="+Inf",{op}}}"#
            )),
            "2"
        );
        assert_eq!(
            get(
                r#"ballast_operation_errors_total{operation="create",driver="loop",code="driver"}"#
            ),
            "1"
        );
        // An unmounted volume has a size and nothing live; an unmeasurable
        // pool has no capacity sample.
        assert_eq!(
            s.keys().filter(|k| k.contains(r#"volume="idle""#)).count(),
            1,
            "{text}"
        );
        assert!(!s
            .keys()
            .any(|k| k.starts_with("ballast_pool_capacity_bytes{pool=\"gone\"")));
    }

    #[test]
    fn every_family_has_help_and_type() {
        let text = collector().render();
        let types: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        for (name, kind) in &types {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            assert!(
                !(*kind == "counter" && name.ends_with("_total")),
                "{name}: the encoder adds _total"
            );
        }
        let names: Vec<&str> = types.iter().map(|(n, _)| *n).collect();
        for want in [
            "ballast_build_info",
            "ballast_pool_used_bytes",
            "ballast_pool_provisioned_bytes",
            "ballast_pool_exclusive_bytes",
            "ballast_pool_available_bytes",
            "ballast_volume_read_bytes",
            "ballast_volume_reads",
            "ballast_operation_duration_seconds",
            "ballast_operation_errors",
        ] {
            assert!(names.contains(&want), "{want} missing: {names:?}");
        }
    }
}
