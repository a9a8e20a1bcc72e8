//! The admin endpoint's connection table: which connections are open, from where, and
//! which to close to make room for a new one. Pure bookkeeping, no I/O: the server
//! ([`super`]) holds one table on its thread and acts on what it returns.
//!
//! A new connection is always admitted, so that a probe gets through however many
//! connections slow or hostile clients hold. To make room, [`Table::admit`] closes:
//!
//! 1. while its address holds `connections_per_address_max` or more, that address's
//!    oldest idle connection (else its oldest), so one address can only crowd itself;
//! 2. while the table holds `connections_max` or more, the oldest idle connection of
//!    all (else the oldest).
//!
//! "Idle" is a connection that has not yet sent a whole request head: its client is
//! making us wait, not the other way round. Cost: a linear scan of at most
//! `connections_max` entries per admission; the table never holds more.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One connection's identity in the table; ids grow with age.
pub type ConnectionId = u64;

/// One open connection.
#[derive(Debug)]
struct Entry<T> {
    /// The client's address (the port is not part of it).
    peer: IpAddr,
    /// No whole request head yet.
    idle: bool,
    /// What the caller needs to close it (a channel's sending half).
    closer: T,
}

/// The open connections, oldest first.
#[derive(Debug)]
pub struct Table<T> {
    entries: BTreeMap<ConnectionId, Entry<T>>,
    next_id: ConnectionId,
    connections_max: usize,
    connections_per_address_max: usize,
}

impl<T> Table<T> {
    /// An empty table. Both limits are at least 1 (checked by the configuration).
    pub fn new(connections_max: usize, connections_per_address_max: usize) -> Table<T> {
        assert!(connections_max >= 1 && connections_per_address_max >= 1);
        Table {
            entries: BTreeMap::new(),
            next_id: 0,
            connections_max,
            connections_per_address_max,
        }
    }

    /// Admits a connection from `peer`: its id, and the closers of the connections it
    /// displaces (already out of the table; the caller closes them).
    pub fn admit(&mut self, peer: IpAddr, closer: T) -> (ConnectionId, Vec<T>) {
        let mut evicted = Vec::new();
        while self.entries.values().filter(|e| e.peer == peer).count()
            >= self.connections_per_address_max
        {
            match self.victim(|e| e.peer == peer) {
                Some(closer) => evicted.push(closer),
                None => break,
            }
        }
        while self.entries.len() >= self.connections_max {
            match self.victim(|_| true) {
                Some(closer) => evicted.push(closer),
                None => break,
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                peer,
                idle: true,
                closer,
            },
        );
        (id, evicted)
    }

    /// Removes the oldest idle entry that `eligible` accepts, else the oldest one.
    fn victim(&mut self, eligible: impl Fn(&Entry<T>) -> bool) -> Option<T> {
        let id = self
            .entries
            .iter()
            .find(|(_, e)| e.idle && eligible(e))
            .or_else(|| self.entries.iter().find(|(_, e)| eligible(e)))
            .map(|(id, _)| *id)?;
        self.entries.remove(&id).map(|e| e.closer)
    }

    /// Connection `id` sent its request head: it is no longer idle.
    pub fn busy(&mut self, id: ConnectionId) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.idle = false;
        }
    }

    /// Connection `id` ended; false if it was not in the table (it was evicted).
    pub fn remove(&mut self, id: ConnectionId) -> bool {
        self.entries.remove(&id).is_some()
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn under_the_limits_nothing_is_evicted() {
        let mut table = Table::new(4, 2);
        for (closer, peer) in [(0, 1), (1, 1), (2, 2), (3, 3)] {
            let (_, evicted) = table.admit(ip(peer), closer);
            assert!(evicted.is_empty());
        }
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn a_full_table_evicts_its_oldest_idle_connection() {
        let mut table = Table::new(3, 3);
        let (first, _) = table.admit(ip(1), "first");
        table.admit(ip(2), "second");
        table.admit(ip(3), "third");
        table.busy(first);
        assert_eq!(table.admit(ip(4), "fourth").1, vec!["second"]);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_full_table_of_busy_connections_evicts_the_oldest() {
        let mut table = Table::new(2, 2);
        let (a, _) = table.admit(ip(1), "a");
        let (b, _) = table.admit(ip(2), "b");
        table.busy(a);
        table.busy(b);
        assert_eq!(table.admit(ip(3), "c").1, vec!["a"]);
    }

    #[test]
    fn an_address_over_its_limit_evicts_its_own_connections_only() {
        let mut table = Table::new(10, 2);
        table.admit(ip(2), "other, oldest of all");
        table.admit(ip(1), "one");
        table.admit(ip(1), "two");
        assert_eq!(table.admit(ip(1), "three").1, vec!["one"]);
        assert_eq!(table.admit(ip(1), "four").1, vec!["two"]);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn removing_an_evicted_connection_is_a_no_op() {
        let mut table = Table::new(1, 1);
        let (old, _) = table.admit(ip(1), 0);
        let (new, evicted) = table.admit(ip(1), 1);
        assert_eq!(evicted, vec![0]);
        assert!(!table.remove(old));
        assert!(table.remove(new));
        assert_eq!(table.len(), 0);
    }
}
