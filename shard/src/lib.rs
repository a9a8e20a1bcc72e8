//! `cutie-shard`: one executor's world.
//!
//! A shard owns a slice of the client connections (those whose client id hashes to it),
//! their sessions, a local subscription trie and a replica of the retained messages. It
//! shares nothing with other shards but messages over a lock-free mesh.
//!
//! - [`core`]: the sans-IO protocol core: CONNECT handling, sessions, QoS 1/2 state
//!   machines, routing decisions. Takes bytes and time, returns bytes and messages.
//! - [`session`]: one client id's session: subscriptions, inflight window, queue, inbound
//!   QoS 2 ids.
//! - [`trie`]: the topic-filter trie used for subscriptions and for other shards' interest.
//! - [`message`]: what shards say to each other, and the ids that cross shard boundaries.
//! - [`stats`]: per-shard counters, latency histograms, and the snapshot each shard
//!   publishes every tick for the admin side (metrics, health, the admin API).
//! - [`access`]: the authentication/authorization interface the broker plugs into, and
//!   the ban table of client addresses that keep failing.
//! - [`plugin`]: message plugins (hooks on connect, subscribe, publish, ticks, and
//!   internal subscriptions), with their contract.
//! - [`durable`]: recovering the shards' write-ahead logs at start (re-homing state after
//!   a change of `shards`), and each shard's log task (group commit off the shard thread,
//!   compaction beside the commits on the `cutie-snap-<n>` thread, failure and
//!   reopening).
//! - [`offload`]: the per-shard password-check thread and its bounded queue, so hashing
//!   never stalls a shard or its log's commits.
//! - [`runtime`]: the glommio shell: executors, listeners, connection tasks, the mesh.
//! - [`tls`]: the TLS listener's configuration (certificate, key, client CA), its reload
//!   on SIGHUP, and the client certificate's user name.

pub mod access;
pub mod core;
pub mod durable;
pub mod message;
pub mod offload;
pub mod plugin;
pub mod runtime;
pub mod session;
pub mod startup;
pub mod stats;
pub mod tls;
pub mod trie;

pub use crate::core::{Durability, Limits, OutputState, ShardCore};
pub use durable::{LogConfig, ShardHealth};
pub use message::{owner_of, ConnId, MeshMessage, Message, ShardId};
pub use runtime::{start, Broker, Control, Monitor, RuntimeConfig, StartError};
pub use stats::{ShardSnapshot, ShardStats};
