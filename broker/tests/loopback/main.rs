//! Loopback integration tests: the real `cutie` binary on an ephemeral port, driven by
//! real clients over TCP.
//!
//! Three kinds of client, independent of the broker's own codec:
//!
//! - [`clients::Mqtt`]: rumqttc's synchronous client, its event loop on a thread;
//! - [`clients::MosquittoSub`] and [`clients::mosquitto_pub`]: the `mosquitto_sub` and
//!   `mosquitto_pub` programs (Debian package `mosquitto-clients`);
//! - [`raw::RawClient`]: hand-written packet bytes over a `TcpStream`, for what real
//!   clients will not send (malformed, out-of-order and duplicated packets) and for
//!   checking exact bytes (flags, return codes, DUP).
//!
//! Every test starts its own broker ([`broker::Broker`]) on `127.0.0.1:0` with a
//! temporary data directory, so tests run in parallel; the one that crowds the machine
//! on purpose (`startup`) runs alone ([`broker::exclusive`]). Every behaviour runs with
//! 1 shard and with 4 ([`shard_tests!`]): with 4, connections land on shards chosen by
//! the kernel and are handed to the shard that owns their client id, so messages cross
//! shards.
//!
//! Tests wait on conditions with generous timeouts ([`broker::TIMEOUT`]) and never on
//! sleeps. Absence ("X was not delivered") is checked with a marker: the same publisher
//! publishes a matching marker after X, and the subscriber's next message must be the
//! marker (a publisher's messages reach a subscriber in order). Nothing asserts timings.

/// Runs the test body `fn $name(shards: u16)` twice, as `$name::with_1_shard` and
/// `$name::with_4_shards`.
macro_rules! shard_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn with_1_shard() {
                    super::$name(1)
                }

                #[test]
                fn with_4_shards() {
                    super::$name(4)
                }
            }
        )+
    };
}

mod broker;
mod clients;
#[path = "../common/mod.rs"]
mod common;
mod raw;

mod access;
mod backlog;
mod connect;
mod keep_alive;
mod malformed;
mod plugins;
mod qos;
mod retained;
mod routing;
mod sessions;
mod shutdown;
mod slow_subscriber;
mod startup;
mod subscriptions;
mod takeover;
mod wills;
