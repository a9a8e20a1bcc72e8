//! The JSON API: `/api/v1/stats` (what the dashboard polls) and the paginated lists
//! `/api/v1/clients` and `/api/v1/subscriptions`.
//!
//! A list is the concatenation of the shards' lists, shard 0 first, each in the order of
//! its session table. A page (`?offset=&limit=`, `limit` at most
//! [`PAGE_LIMIT_MAX`], default [`PAGE_LIMIT_DEFAULT`]) is cut from it with each shard's
//! count as of its latest tick, then asked of the shards that hold it over their control
//! channels; each answers at its next tick (within ~100 ms). The lists are live: pages
//! taken at different times may miss or repeat entries that changed in between.

use crate::admin::http::Request;
use crate::admin::metrics::{Buckets, Collected, Latency, LATENCY_BUCKETS_US};
use crate::admin::ShardView;
use cutie_shard::stats::{ClientInfo, Page, SubscriptionInfo, PAGE_LIMIT_MAX};
use cutie_shard::{Control, Monitor};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Entries per page when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: usize = 100;

/// How long a list waits for the shards' answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// `/api/v1/stats`: totals, per-shard figures and the latency histograms.
pub fn stats(views: &[ShardView], collected: &Collected, uptime: Duration, ready: bool) -> Value {
    let sum = |f: fn(&ShardView) -> u64| -> u64 { views.iter().map(f).sum() };
    let shards: Vec<Value> = views
        .iter()
        .map(|v| {
            let s = &v.stats;
            json!({
                "shard": v.index,
                "ready": v.state.ready,
                "log_healthy": !v.state.log_failed,
                "tick_age_ms": v.state.tick_age_ms,
                "connections": s.connections_current,
                "sessions_online": s.connections_current,
                "sessions_offline": s.sessions_current.saturating_sub(s.connections_current),
                "subscriptions": v.subscriptions,
                "retained": v.retained,
                "publish_received": s.publish_received_total.iter().sum::<u64>(),
                "publish_sent": s.publish_sent_total.iter().sum::<u64>(),
                "mesh_forwarded": s.forwarded_total,
                "mesh_received": s.mesh_received_total,
                "network_received_bytes": s.network_received_bytes_total,
                "network_sent_bytes": s.network_sent_bytes_total,
                "wal_records": s.wal_records_total,
                "wal_syncs": s.wal_syncs_total,
                "wal_segment_bytes": s.wal_segment_bytes,
                "wal_commit_us_max": s.wal_commit_us_max,
                "wal_failures": s.wal_failures_total,
            })
        })
        .collect();
    let publish_by_qos = |f: fn(&ShardView) -> [u64; 3]| -> Vec<u64> {
        (0..3)
            .map(|q| views.iter().map(|v| f(v)[q]).sum())
            .collect()
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": uptime.as_secs(),
        "ready": ready,
        "shard_count": views.len(),
        "totals": {
            "connections": sum(|v| v.stats.connections_current),
            "connections_accepted": sum(|v| v.stats.connections_total),
            "connections_refused": sum(|v| v.stats.connections_refused_total),
            "sessions_online": sum(|v| v.stats.connections_current),
            "sessions_offline": sum(|v| v.stats.sessions_current.saturating_sub(v.stats.connections_current)),
            "subscriptions": sum(|v| v.subscriptions),
            "retained": views.iter().map(|v| v.retained).max().unwrap_or(0),
            "publish_received": sum(|v| v.stats.publish_received_total.iter().sum()),
            "publish_sent": sum(|v| v.stats.publish_sent_total.iter().sum()),
            "publish_received_by_qos": publish_by_qos(|v| v.stats.publish_received_total),
            "publish_sent_by_qos": publish_by_qos(|v| v.stats.publish_sent_total),
            "publish_received_bytes": sum(|v| v.stats.publish_received_bytes_total),
            "publish_sent_bytes": sum(|v| v.stats.publish_sent_bytes_total),
            "network_received_bytes": sum(|v| v.stats.network_received_bytes_total),
            "network_sent_bytes": sum(|v| v.stats.network_sent_bytes_total),
            "mesh_forwarded": sum(|v| v.stats.forwarded_total),
            "dropped": {
                "queue_full": sum(|v| v.stats.dropped_queue_full_total),
                "outbound_buffer_full": sum(|v| v.stats.dropped_outbound_full_total),
                "offline": sum(|v| v.stats.dropped_offline_total),
                "no_subscribers": sum(|v| v.stats.dropped_no_subscribers_total),
            },
            "publish_refused_log_failed": sum(|v| v.stats.publish_refused_log_failed_total),
            "protocol_errors": sum(|v| v.stats.protocol_errors_total),
            "packets_too_large": sum(|v| v.stats.packets_too_large_total),
            "keep_alive_expired": sum(|v| v.stats.keep_alive_expired_total),
            "takeovers": sum(|v| v.stats.takeovers_total),
            "auth_failures": sum(|v| v.stats.auth_failures_total),
            "publish_denied": sum(|v| v.stats.publish_denied_total),
            "subscribe_denied": sum(|v| v.stats.subscribe_denied_total),
            "wal_failures": sum(|v| v.stats.wal_failures_total),
        },
        "shards": shards,
        "latency": {
            "buckets_le_us": LATENCY_BUCKETS_US,
            "delivery": latency(&collected.delivery),
            "wal_commit": latency(&collected.wal_commit),
        },
    })
}

fn latency(latency: &Latency) -> Value {
    let Buckets { counts, count, .. } = latency.merged();
    let quantiles = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() {
            Value::Null
        } else {
            json!({
                "count": h.len(),
                "p50_us": h.value_at_quantile(0.5),
                "p90_us": h.value_at_quantile(0.9),
                "p99_us": h.value_at_quantile(0.99),
                "max_us": h.max(),
            })
        }
    };
    json!({
        "count": count,
        "bucket_counts": counts.to_vec(),
        "since_start": quantiles(&latency.total),
        "recent": quantiles(&latency.recent),
    })
}

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// Sessions.
    Clients,
    /// Subscriptions.
    Subscriptions,
}

/// `?offset=&limit=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Entries to skip.
    pub offset: usize,
    /// Most entries to return.
    pub limit: usize,
}

impl PageRequest {
    /// Reads and checks the parameters.
    pub fn parse(request: &Request) -> Result<PageRequest, String> {
        let number = |key: &str, default: usize| -> Result<usize, String> {
            match request.param(key) {
                None => Ok(default),
                Some(text) => text
                    .parse()
                    .map_err(|_| format!("{key} must be a non-negative integer, got {text:?}")),
            }
        };
        let offset = number("offset", 0)?;
        let limit = number("limit", PAGE_LIMIT_DEFAULT)?;
        if limit > PAGE_LIMIT_MAX {
            return Err(format!(
                "limit must be at most {PAGE_LIMIT_MAX}, got {limit}"
            ));
        }
        Ok(PageRequest { offset, limit })
    }
}

/// Which slice of which shard's list makes up a page: `(shard, offset, limit)`, given
/// each shard's count.
pub fn plan(counts: &[usize], page: PageRequest) -> Vec<(usize, usize, usize)> {
    let mut skip = page.offset;
    let mut left = page.limit;
    let mut plan = Vec::new();
    for (shard, &count) in counts.iter().enumerate() {
        if left == 0 {
            break;
        }
        if skip >= count {
            skip -= count;
            continue;
        }
        let take = (count - skip).min(left);
        plan.push((shard, skip, take));
        left -= take;
        skip = 0;
    }
    plan
}

/// A page of `which`, asked of the shards that hold it.
pub fn list(monitor: &Monitor, which: List, page: PageRequest) -> Result<Value, String> {
    let counts: Vec<usize> = monitor
        .shards()
        .iter()
        .map(|health| {
            let snapshot = health
                .snapshot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match which {
                List::Clients => snapshot.stats.sessions_current as usize,
                List::Subscriptions => snapshot.subscriptions as usize,
            }
        })
        .collect();
    let total: usize = counts.iter().sum();
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut items = Vec::new();
    match which {
        List::Clients => {
            let asked = ask(monitor, &counts, page, |offset, limit, reply| {
                Control::Clients {
                    offset,
                    limit,
                    reply,
                }
            })?;
            for (shard, rx) in asked {
                let answer: Page<ClientInfo> = receive(shard, &rx, deadline)?;
                items.extend(answer.items.into_iter().map(|c| {
                    json!({
                        "shard": shard,
                        "client_id": c.client_id,
                        "connected": c.connected,
                        "clean_session": c.clean_session,
                        "subscriptions": c.subscriptions,
                        "inflight": c.inflight,
                        "queued": c.queued,
                    })
                }));
            }
        }
        List::Subscriptions => {
            let asked = ask(monitor, &counts, page, |offset, limit, reply| {
                Control::Subscriptions {
                    offset,
                    limit,
                    reply,
                }
            })?;
            for (shard, rx) in asked {
                let answer: Page<SubscriptionInfo> = receive(shard, &rx, deadline)?;
                items.extend(answer.items.into_iter().map(|s| {
                    json!({
                        "shard": shard,
                        "client_id": s.client_id,
                        "filter": s.filter,
                        "qos": s.qos,
                    })
                }));
            }
        }
    }
    Ok(json!({
        "offset": page.offset,
        "limit": page.limit,
        "total": total,
        "items": items,
    }))
}

type Asked<T> = Vec<(usize, crossbeam_channel::Receiver<Page<T>>)>;

fn ask<T>(
    monitor: &Monitor,
    counts: &[usize],
    page: PageRequest,
    request: impl Fn(usize, usize, crossbeam_channel::Sender<Page<T>>) -> Control,
) -> Result<Asked<T>, String> {
    let mut asked = Vec::new();
    for (shard, offset, limit) in plan(counts, page) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !monitor.send(shard, request(offset, limit, tx)) {
            return Err(format!("shard {shard} is busy or gone; try again"));
        }
        asked.push((shard, rx));
    }
    Ok(asked)
}

fn receive<T>(
    shard: usize,
    rx: &crossbeam_channel::Receiver<Page<T>>,
    deadline: Instant,
) -> Result<Page<T>, String> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| format!("shard {shard} did not answer within {ANSWER_TIMEOUT:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(offset: usize, limit: usize) -> PageRequest {
        PageRequest { offset, limit }
    }

    #[test]
    fn a_page_is_cut_across_shards_in_order() {
        let counts = [3, 0, 5, 2];
        assert_eq!(plan(&counts, page(0, 2)), vec![(0, 0, 2)]);
        assert_eq!(plan(&counts, page(2, 4)), vec![(0, 2, 1), (2, 0, 3)]);
        assert_eq!(plan(&counts, page(3, 100)), vec![(2, 0, 5), (3, 0, 2)]);
        assert_eq!(plan(&counts, page(9, 100)), vec![(3, 1, 1)]);
        assert!(plan(&counts, page(10, 100)).is_empty());
        assert!(plan(&counts, page(0, 0)).is_empty());
    }

    #[test]
    fn page_parameters_are_checked() {
        let parse = |target: &str| PageRequest::parse(&Request::from_target("GET", target));
        assert_eq!(parse("/api/v1/clients"), Ok(page(0, PAGE_LIMIT_DEFAULT)));
        assert_eq!(parse("/api/v1/clients?offset=5&limit=7"), Ok(page(5, 7)));
        assert!(parse("/api/v1/clients?limit=1001").is_err());
        assert!(parse("/api/v1/clients?offset=-1").is_err());
    }

    #[test]
    fn stats_sum_the_shards() {
        let mut a = ShardView::default();
        a.stats.connections_current = 2;
        a.stats.sessions_current = 3;
        a.stats.publish_received_total = [1, 2, 3];
        a.retained = 4;
        let mut b = ShardView {
            index: 1,
            ..ShardView::default()
        };
        b.stats.connections_current = 1;
        b.stats.sessions_current = 1;
        b.stats.dropped_queue_full_total = 9;
        b.retained = 4;
        let collected = Collected::new(2);
        let value = stats(&[a, b], &collected, Duration::from_secs(3), true);
        assert_eq!(value["totals"]["connections"], 3);
        assert_eq!(value["totals"]["sessions_offline"], 1);
        assert_eq!(value["totals"]["publish_received"], 6);
        assert_eq!(value["totals"]["retained"], 4);
        assert_eq!(value["totals"]["dropped"]["queue_full"], 9);
        assert_eq!(value["shards"][1]["connections"], 1);
        assert_eq!(value["uptime_secs"], 3);
        assert_eq!(value["latency"]["delivery"]["count"], 0);
    }
}
