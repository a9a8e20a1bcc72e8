//! The start-up gate of one shard: connections other shards hand over before this shard
//! has heard every peer's recovery marker wait until it has.
//!
//! At start every shard restores its log, sends its peers what the restored state owes
//! them (the interest of its persistent subscriptions, its retained messages) and then
//! a marker; the mesh is FIFO per pair, so a peer's marker comes after all of that. A
//! shard accepts clients once every peer's marker has arrived. A connection it accepts
//! for a client owned by another shard is handed over, and the owner may not have every
//! marker yet: served at once, its client could publish a QoS 1 message that the owner
//! routes before it knows a third shard's restored subscribers, and have it acknowledged
//! without their copies. The gate holds such hand-offs and releases them with the last
//! marker. Pure: the runtime and the deterministic simulation drive it alike.

/// See the module documentation. `T` is what is handed over (a connection).
#[derive(Debug)]
pub struct StartGate<T> {
    /// Peers whose recovery marker has not arrived.
    markers_missing: usize,
    /// Hand-offs that arrived before the last marker, in arrival order.
    held: Vec<T>,
}

impl<T> StartGate<T> {
    /// A gate waiting for the markers of `peers` other shards.
    pub fn new(peers: usize) -> StartGate<T> {
        StartGate {
            markers_missing: peers,
            held: Vec::new(),
        }
    }

    /// Whether every peer's marker has arrived: the shard may accept and serve clients.
    pub fn is_open(&self) -> bool {
        self.markers_missing == 0
    }

    /// A connection handed over by a peer: `Some` to serve now, `None` when the gate
    /// keeps it until [`StartGate::marker`] releases it.
    pub fn hand_off(&mut self, connection: T) -> Option<T> {
        if self.is_open() {
            Some(connection)
        } else {
            self.held.push(connection);
            None
        }
    }

    /// A peer's recovery marker arrived; with the last one, the held hand-offs to serve
    /// now, in the order they came.
    pub fn marker(&mut self) -> Vec<T> {
        self.markers_missing = self.markers_missing.saturating_sub(1);
        if self.is_open() {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_offs_wait_for_the_last_marker_and_keep_their_order() {
        let mut gate = StartGate::new(2);
        assert!(!gate.is_open());
        assert_eq!(gate.hand_off(1), None);
        assert!(gate.marker().is_empty());
        assert_eq!(gate.hand_off(2), None);
        assert_eq!(gate.marker(), vec![1, 2]);
        assert!(gate.is_open());
        assert_eq!(gate.hand_off(3), Some(3));
        assert!(gate.marker().is_empty(), "a stray marker releases nothing");
    }

    #[test]
    fn a_single_shard_is_open_at_once() {
        let mut gate = StartGate::new(0);
        assert!(gate.is_open());
        assert_eq!(gate.hand_off("c"), Some("c"));
    }
}
