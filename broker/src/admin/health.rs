//! `/healthz` (liveness) and `/readyz` (readiness) decisions, from the shards' health
//! flags alone: pure functions, so every case is unit-tested here.
//!
//! - Live: the shards exist (recovery is over) and every one has ticked within
//!   [`TICK_DEADLINE_MS`] and has not exited. A shard's tick loop runs every 100 ms on
//!   its own executor, so a late tick means a shard that is stuck (or starved).
//! - Ready: live shards that all serve clients (recovered, heard from every peer,
//!   accepting) and whose write-ahead logs take records. During recovery, during
//!   shutdown, and while any shard's log is failed (QoS 1/2 publishes are refused), the
//!   broker is not ready.

use crate::admin::ShardState;
use serde_json::json;

/// Longest time since a shard's latest tick for it to count as alive.
pub const TICK_DEADLINE_MS: u64 = 5_000;

/// An answer: healthy or not, and a short JSON body saying why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// 200 if true, 503 if not.
    pub ok: bool,
    /// Says why.
    pub body: serde_json::Value,
}

/// Liveness; `shards` is `None` while the broker is still starting (recovering its logs).
pub fn liveness(shards: Option<&[ShardState]>) -> Verdict {
    let Some(shards) = shards else {
        return Verdict {
            ok: false,
            body: json!({
                "status": "starting",
                "problems": ["starting: recovering the write-ahead logs and starting the shards"],
            }),
        };
    };
    let mut problems = Vec::new();
    let mut tick_age_ms_max = 0;
    for (i, shard) in shards.iter().enumerate() {
        if shard.exited {
            problems.push(format!("shard {i} has exited"));
            continue;
        }
        match shard.tick_age_ms {
            None => problems.push(format!("shard {i} has not started")),
            Some(age) if age > TICK_DEADLINE_MS => problems.push(format!(
                "shard {i} has not ticked for {age} ms (deadline {TICK_DEADLINE_MS} ms)"
            )),
            Some(age) => tick_age_ms_max = tick_age_ms_max.max(age),
        }
    }
    let ok = problems.is_empty();
    Verdict {
        ok,
        body: if ok {
            json!({"status": "ok", "shards": shards.len(), "tick_age_ms_max": tick_age_ms_max})
        } else {
            json!({"status": "unhealthy", "shards": shards.len(), "problems": problems})
        },
    }
}

/// Readiness; `shards` is `None` while the broker is still starting.
pub fn readiness(shards: Option<&[ShardState]>) -> Verdict {
    let Some(shards) = shards else {
        return Verdict {
            ok: false,
            body: json!({
                "ready": false,
                "reasons": ["starting: recovering the write-ahead logs and starting the shards"],
            }),
        };
    };
    let mut reasons = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        if shard.exited {
            reasons.push(format!("shard {i} has exited"));
        } else if !shard.ready {
            reasons.push(format!(
                "shard {i} is not serving (recovering, starting or shutting down)"
            ));
        }
        if shard.log_failed {
            reasons.push(format!(
                "shard {i}: write-ahead log failed (QoS 1/2 publishes are refused until it is reopened)"
            ));
        }
    }
    let ok = reasons.is_empty();
    Verdict {
        ok,
        body: if ok {
            json!({"ready": true, "shards": shards.len()})
        } else {
            json!({"ready": false, "shards": shards.len(), "reasons": reasons})
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving() -> ShardState {
        ShardState {
            ready: true,
            exited: false,
            log_failed: false,
            tick_age_ms: Some(40),
        }
    }

    fn reasons(verdict: &Verdict, key: &str) -> String {
        verdict.body[key].to_string()
    }

    #[test]
    fn serving_shards_are_live_and_ready() {
        let shards = [serving(), serving()];
        assert!(liveness(Some(&shards)).ok);
        let ready = readiness(Some(&shards));
        assert!(ready.ok);
        assert_eq!(ready.body["ready"], true);
    }

    #[test]
    fn a_starting_broker_is_neither_live_nor_ready() {
        let live = liveness(None);
        assert!(!live.ok);
        assert_eq!(live.body["status"], "starting");
        let ready = readiness(None);
        assert!(!ready.ok);
        assert!(reasons(&ready, "reasons").contains("recovering"));
    }

    #[test]
    fn a_recovering_shard_is_live_but_not_ready() {
        let mut recovering = serving();
        recovering.ready = false;
        let shards = [serving(), recovering];
        assert!(liveness(Some(&shards)).ok);
        let ready = readiness(Some(&shards));
        assert!(!ready.ok);
        assert!(reasons(&ready, "reasons").contains("shard 1 is not serving"));
    }

    #[test]
    fn a_failed_log_makes_the_broker_unready_but_live() {
        let mut failed = serving();
        failed.log_failed = true;
        let shards = [failed, serving()];
        assert!(liveness(Some(&shards)).ok);
        let ready = readiness(Some(&shards));
        assert!(!ready.ok);
        assert!(reasons(&ready, "reasons").contains("shard 0: write-ahead log failed"));
    }

    #[test]
    fn a_late_tick_makes_the_broker_unhealthy() {
        let mut stuck = serving();
        stuck.tick_age_ms = Some(TICK_DEADLINE_MS + 1);
        let shards = [serving(), stuck];
        let live = liveness(Some(&shards));
        assert!(!live.ok);
        assert!(reasons(&live, "problems").contains("shard 1 has not ticked"));
        let mut on_time = serving();
        on_time.tick_age_ms = Some(TICK_DEADLINE_MS);
        assert!(liveness(Some(&[on_time])).ok);
    }

    #[test]
    fn an_exited_or_unstarted_shard_is_unhealthy_and_unready() {
        let mut exited = serving();
        exited.exited = true;
        exited.ready = false;
        let live = liveness(Some(&[exited]));
        assert!(!live.ok);
        assert!(reasons(&live, "problems").contains("shard 0 has exited"));
        assert!(!readiness(Some(&[exited])).ok);
        let mut unstarted = serving();
        unstarted.tick_age_ms = None;
        assert!(!liveness(Some(&[unstarted])).ok);
    }
}
