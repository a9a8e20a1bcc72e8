//! Who may connect and what they may do: the interface the broker's authentication and
//! authorization plug into, and the ban table for clients that keep failing.
//!
//! - [`Authenticator`] checks CONNECT credentials. It may be slow (password hashing), so
//!   the runtime calls it on the accepting shard's password-check thread
//!   ([`crate::offload`]), never on a shard, before the connection reaches its owner shard. It is shared by every shard (`Send + Sync`).
//! - [`Authorizer`] makes, at CONNECT, one [`ClientPolicy`] per connection; the core asks
//!   that policy on every PUBLISH and SUBSCRIBE (and for the will). Policies must answer
//!   in bounded time without I/O or locks: they run on the shard.
//! - [`BanTable`] counts failures (bad credentials, malformed packets) per client address
//!   and refuses an address that failed too often. It is the one structure shared by all
//!   shards behind a lock, touched only when a connection is accepted or fails, never per
//!   message.
//!
//! Reloading (SIGHUP) swaps the authenticator and authorizer in an [`AccessControl`];
//! shards pick up a new authorizer at their next tick and re-derive the policies of
//! their connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The client a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The client identifier (the assigned one if the client sent none).
    pub client_id: &'a str,
    /// The CONNECT user name, if any.
    pub username: Option<&'a str>,
}

/// What an [`Authenticator`] decided about a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials are good.
    Accept,
    /// Unknown user or wrong password: CONNACK 4.
    BadCredentials,
    /// Not allowed to connect: CONNACK 5.
    NotAuthorized,
}

/// Checks CONNECT credentials. Called on a blocking thread; may take milliseconds.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Decides about a client presenting `password` (with `client.username`, which may be
    /// absent: an anonymous client).
    fn authenticate(&self, client: &Identity<'_>, password: Option<&[u8]>) -> AuthOutcome;
}

/// One connection's permissions, asked on the shard for every PUBLISH and SUBSCRIBE.
pub trait ClientPolicy: Send + std::fmt::Debug {
    /// Whether the client may publish to the topic name `topic`.
    fn may_publish(&self, topic: &str) -> bool;
    /// Whether the client may subscribe to the topic filter `filter`.
    fn may_subscribe(&self, filter: &str) -> bool;
}

/// Makes the [`ClientPolicy`] of each connection.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// The permissions of `client`, resolved once at CONNECT.
    fn policy(&self, client: &Identity<'_>) -> Box<dyn ClientPolicy>;
}

/// The authentication and authorization in force, swappable at run time (SIGHUP).
#[derive(Debug, Default)]
pub struct AccessControl {
    authenticator: RwLock<Option<Arc<dyn Authenticator>>>,
    authorizer: RwLock<Option<Arc<dyn Authorizer>>>,
    /// Bumped at each [`AccessControl::set_authorizer`]: shards compare it at each tick.
    authorizer_generation: AtomicU64,
    /// Bans and per-address failure counts.
    pub bans: BanTable,
    /// Client connections admitted and not yet closed, on every shard: what
    /// `max_connections` limits (one atomic add per accepted connection, never per
    /// message).
    connections: AtomicUsize,
}

impl AccessControl {
    /// No authentication, no authorization, banning with `ban`.
    pub fn new(ban: BanConfig) -> AccessControl {
        AccessControl {
            bans: BanTable::new(ban),
            ..AccessControl::default()
        }
    }

    /// Replaces the authenticator (`None`: every client is accepted).
    pub fn set_authenticator(&self, authenticator: Option<Arc<dyn Authenticator>>) {
        *self
            .authenticator
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = authenticator;
    }

    /// The authenticator now in force.
    pub fn authenticator(&self) -> Option<Arc<dyn Authenticator>> {
        self.authenticator
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the authorizer (`None`: everything is allowed).
    pub fn set_authorizer(&self, authorizer: Option<Arc<dyn Authorizer>>) {
        *self
            .authorizer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = authorizer;
        self.authorizer_generation.fetch_add(1, Ordering::Release);
    }

    /// The authorizer now in force and its generation.
    pub fn authorizer(&self) -> (u64, Option<Arc<dyn Authorizer>>) {
        let generation = self.authorizer_generation.load(Ordering::Acquire);
        let authorizer = self
            .authorizer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (generation, authorizer)
    }

    /// The generation of the authorizer (cheap: an atomic load).
    pub fn authorizer_generation(&self) -> u64 {
        self.authorizer_generation.load(Ordering::Acquire)
    }

    /// Client connections admitted and not yet closed, broker-wide.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// When an address is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanConfig {
    /// Failures within `window` that ban the address; 0 turns banning off.
    pub threshold: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
    /// Connections open at once from one address; 0: no limit.
    pub connections_per_address_max: u32,
}

impl Default for BanConfig {
    fn default() -> BanConfig {
        BanConfig {
            threshold: 10,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(300),
            connections_per_address_max: 0,
        }
    }
}

#[derive(Debug, Default)]
struct AddressState {
    /// Failures in the current window, and when the window started.
    failures: u32,
    window_start: Option<Instant>,
    banned_until: Option<Instant>,
    /// Connections open now.
    open: u32,
}

/// Failure counts, bans and open connections per client address. See the module docs.
#[derive(Debug, Default)]
pub struct BanTable {
    config: BanConfig,
    addresses: Mutex<HashMap<IpAddr, AddressState>>,
    /// Addresses banned so far (a ban that expires and is imposed again counts twice).
    pub bans_total: AtomicU64,
    /// Connections refused because their address was banned.
    pub refused_banned_total: AtomicU64,
    /// Connections refused for the per-address limit.
    pub refused_address_limit_total: AtomicU64,
}

/// Why [`BanTable::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is banned.
    Banned,
    /// The address has `connections_per_address_max` connections open.
    TooManyConnections,
    /// The broker has `max_connections` connections open.
    BrokerFull,
}

/// An admitted connection's place in the broker-wide connection count and in the
/// [`BanTable`]: released when dropped, wherever the connection ends (it may move to
/// another shard with its socket).
#[derive(Debug)]
pub struct Admitted {
    access: Arc<AccessControl>,
    /// The client's address, when the socket could tell it.
    pub peer: Option<IpAddr>,
}

impl Admitted {
    /// Admits a connection from `peer` while fewer than `connections_max` are open in
    /// the whole broker (0: no limit), or says why not.
    pub fn admit(
        access: &Arc<AccessControl>,
        peer: Option<IpAddr>,
        connections_max: usize,
    ) -> Result<Admitted, Refusal> {
        let open = access.connections.fetch_add(1, Ordering::Relaxed);
        if connections_max > 0 && open >= connections_max {
            access.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::BrokerFull);
        }
        // From here on, dropping `admitted` gives the slot back.
        let mut admitted = Admitted {
            access: Arc::clone(access),
            peer: None,
        };
        if let Some(address) = peer {
            access.bans.admit(address, Instant::now())?;
            // Admitted by the ban table too: released there on drop.
            admitted.peer = Some(address);
        }
        Ok(admitted)
    }

    /// The client failed (bad credentials, malformed packet): counts toward a ban.
    pub fn record_failure(&self) {
        if let Some(peer) = self.peer {
            self.access.bans.record_failure(peer, Instant::now());
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.access.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(peer) = self.peer {
            self.access.bans.release(peer);
        }
    }
}

/// Entries kept at most; beyond it, addresses with no ban, no connection and no recent
/// failure are forgotten first (so a scan of many addresses cannot grow memory without bound).
const ADDRESSES_MAX: usize = 100_000;

impl BanTable {
    /// A table applying `config`.
    pub fn new(config: BanConfig) -> BanTable {
        BanTable {
            config,
            ..BanTable::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, AddressState>> {
        self.addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection from `address` was accepted: admits it (and counts it open) or says
    /// why not. An admitted connection must be [`BanTable::release`]d when it closes.
    pub fn admit(&self, address: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut addresses = self.lock();
        if addresses.len() >= ADDRESSES_MAX {
            addresses.retain(|_, s| {
                s.open > 0 || s.banned_until.is_some_and(|until| until > now) || s.failures > 0
            });
        }
        let state = addresses.entry(address).or_default();
        if let Some(until) = state.banned_until {
            if until > now {
                self.refused_banned_total.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Banned);
            }
            state.banned_until = None;
            state.failures = 0;
            state.window_start = None;
        }
        let max = self.config.connections_per_address_max;
        if max > 0 && state.open >= max {
            self.refused_address_limit_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooManyConnections);
        }
        state.open += 1;
        Ok(())
    }

    /// An admitted connection from `address` closed.
    pub fn release(&self, address: IpAddr) {
        let mut addresses = self.lock();
        if let Some(state) = addresses.get_mut(&address) {
            state.open = state.open.saturating_sub(1);
            if state.open == 0 && state.failures == 0 && state.banned_until.is_none() {
                addresses.remove(&address);
            }
        }
    }

    /// A client at `address` failed (bad credentials, malformed packet). Returns true
    /// when this failure banned the address.
    pub fn record_failure(&self, address: IpAddr, now: Instant) -> bool {
        if self.config.threshold == 0 {
            return false;
        }
        let mut addresses = self.lock();
        let state = addresses.entry(address).or_default();
        match state.window_start {
            Some(start) if now.duration_since(start) <= self.config.window => {}
            _ => {
                state.window_start = Some(now);
                state.failures = 0;
            }
        }
        state.failures += 1;
        if state.failures > self.config.threshold && state.banned_until.is_none_or(|u| u <= now) {
            state.banned_until = Some(now + self.config.duration);
            self.bans_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %address,
                failures = state.failures,
                ban_secs = self.config.duration.as_secs(),
                "banning a client address that keeps failing"
            );
            return true;
        }
        false
    }

    /// Whether `address` is banned now.
    pub fn is_banned(&self, address: IpAddr, now: Instant) -> bool {
        self.lock()
            .get(&address)
            .and_then(|s| s.banned_until)
            .is_some_and(|until| until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn table(threshold: u32, per_address: u32) -> BanTable {
        BanTable::new(BanConfig {
            threshold,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(30),
            connections_per_address_max: per_address,
        })
    }

    #[test]
    fn an_address_is_banned_after_more_than_threshold_failures_in_the_window() {
        let t = table(3, 0);
        let now = Instant::now();
        for i in 0..3 {
            assert!(!t.record_failure(ip(1), now + Duration::from_secs(i)));
        }
        assert!(t.admit(ip(1), now).is_ok());
        assert!(t.record_failure(ip(1), now + Duration::from_secs(3)));
        assert_eq!(
            t.admit(ip(1), now + Duration::from_secs(4)),
            Err(Refusal::Banned)
        );
        assert!(
            t.admit(ip(2), now).is_ok(),
            "other addresses are not affected"
        );
        // The ban ends.
        assert!(t.admit(ip(1), now + Duration::from_secs(40)).is_ok());
        assert_eq!(t.bans_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = table(2, 0);
        let now = Instant::now();
        for i in 0..6 {
            assert!(!t.record_failure(ip(1), now + Duration::from_secs(11 * i)));
        }
        assert!(!t.is_banned(ip(1), now + Duration::from_secs(70)));
    }

    #[test]
    fn threshold_zero_turns_banning_off() {
        let t = table(0, 0);
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!t.record_failure(ip(1), now));
        }
        assert!(t.admit(ip(1), now).is_ok());
    }

    #[test]
    fn admitted_connections_are_counted_broker_wide_and_released_on_drop() {
        let access = Arc::new(AccessControl::new(BanConfig {
            threshold: 1,
            ..BanConfig::default()
        }));
        let a = Admitted::admit(&access, Some(ip(1)), 2).expect("first");
        let b = Admitted::admit(&access, None, 2).expect("second, no address");
        assert_eq!(
            Admitted::admit(&access, Some(ip(2)), 2).err(),
            Some(Refusal::BrokerFull)
        );
        assert_eq!(access.connections(), 2, "a refusal gives its slot back");
        drop(a);
        assert!(Admitted::admit(&access, Some(ip(2)), 2).is_ok());
        drop(b);
        assert_eq!(access.connections(), 0);
        // A banned address takes no slot.
        let now = Instant::now();
        access.bans.record_failure(ip(3), now);
        access.bans.record_failure(ip(3), now);
        assert_eq!(
            Admitted::admit(&access, Some(ip(3)), 2).err(),
            Some(Refusal::Banned)
        );
        assert_eq!(access.connections(), 0);
    }

    #[test]
    fn connections_per_address_are_limited_and_released() {
        let t = table(0, 2);
        let now = Instant::now();
        assert!(t.admit(ip(1), now).is_ok());
        assert!(t.admit(ip(1), now).is_ok());
        assert_eq!(t.admit(ip(1), now), Err(Refusal::TooManyConnections));
        t.release(ip(1));
        assert!(t.admit(ip(1), now).is_ok());
    }
}
