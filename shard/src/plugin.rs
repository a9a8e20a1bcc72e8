//! Message plugins: code registered at start (from configuration) that sees what clients
//! do and may change it. Authentication and authorization plug in through
//! [`crate::access`]; this is the message side.
//!
//! Each shard owns one instance of every plugin, built by its [`PluginFactory`], and
//! calls it on the shard thread. The contract, since a plugin runs inside a shard:
//!
//! - **Bounded work per call.** No I/O, no locks, no blocking, nothing proportional to
//!   more than the message at hand; keep per-call work to microseconds. Heavy or slow
//!   work belongs in a thread of the plugin's own, fed through a bounded channel polled
//!   with `try_recv` in [`MessagePlugin::on_tick`].
//! - **Bounded output.** Derived messages beyond [`DERIVED_PER_CALL_MAX`] per call are
//!   dropped and counted.
//! - **Bounded state.** A plugin that keeps per-topic or per-client state must cap it.
//!
//! Hooks: connect and disconnect, subscribe (accept, reject, rewrite the filter), publish
//! (pass, drop, rewrite topic or payload, publish derived messages), a tick every 100 ms,
//! and internal subscriptions: the filters from [`MessagePlugin::subscriptions`] are
//! subscribed on the plugin's home shard as if by a client, so every matching message
//! published on any shard reaches [`MessagePlugin::on_message`] there, exactly once.

use crate::access::Identity;
use crate::message::ShardId;
use bytes::Bytes;
use cutie_codec::{QoS, TopicFilter, TopicName};

/// Derived messages one call may publish; more are dropped and counted.
pub const DERIVED_PER_CALL_MAX: usize = 1024;

/// A message as a plugin sees and makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMessage {
    /// The topic name.
    pub topic: TopicName,
    /// The application message.
    pub payload: Bytes,
    /// The QoS it is published with.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
}

/// What to do with a PUBLISH after [`MessagePlugin::on_publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVerdict {
    /// Route it (as the plugin may have rewritten it).
    Pass,
    /// Do not route it. The client still gets its PUBACK/PUBREC: MQTT 3.1.1 cannot refuse.
    Drop,
}

/// What to do with a subscription after [`MessagePlugin::on_subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeVerdict {
    /// Subscribe as asked.
    Accept,
    /// Subscribe to this filter instead.
    Rewrite(TopicFilter),
    /// Refuse: SUBACK 0x80.
    Reject,
}

/// One shard's instance of a plugin. Every method has a default that does nothing.
pub trait MessagePlugin: std::fmt::Debug {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// A client's CONNECT was accepted on this shard.
    fn on_connect(&mut self, _client: &Identity<'_>) {}

    /// A client's connection on this shard ended.
    fn on_disconnect(&mut self, _client_id: &str) {}

    /// A SUBSCRIBE asks for `filter`.
    fn on_subscribe(&mut self, _client: &Identity<'_>, _filter: &TopicFilter) -> SubscribeVerdict {
        SubscribeVerdict::Accept
    }

    /// A client published `message` (which the plugin may rewrite); messages pushed to
    /// `derived` are published too, after it.
    fn on_publish(
        &mut self,
        _client: &Identity<'_>,
        _message: &mut PluginMessage,
        _derived: &mut Vec<PluginMessage>,
    ) -> PublishVerdict {
        PublishVerdict::Pass
    }

    /// The filters this plugin wants delivered on its home shard (asked once, at start).
    fn subscriptions(&self) -> Vec<TopicFilter> {
        Vec::new()
    }

    /// A message matching [`MessagePlugin::subscriptions`], on the home shard.
    fn on_message(&mut self, _message: &PluginMessage, _now_ms: u64) {}

    /// Every tick (100 ms); messages pushed to `derived` are published.
    fn on_tick(&mut self, _now_ms: u64, _derived: &mut Vec<PluginMessage>) {}
}

/// Builds the instance of a plugin for each shard.
pub trait PluginFactory: Send + Sync + std::fmt::Debug {
    /// The instance for `shard` of `shards`.
    fn build(&self, shard: ShardId, shards: u16) -> Box<dyn MessagePlugin>;

    /// The shard whose instance gets the internal subscriptions (default: shard 0).
    fn home(&self, _shards: u16) -> ShardId {
        ShardId(0)
    }
}
