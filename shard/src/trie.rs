//! A topic-filter trie: which `(filter, key)` entries match a topic name.
//!
//! One structure serves two tables on a shard: the session subscriptions (key: a local
//! session, value: the granted QoS) and the shard-interest table (key: a peer shard,
//! value: how many of its filters are there). Matching is the hot path of every PUBLISH;
//! subscribing and unsubscribing are not.
//!
//! # Shape and cost
//!
//! Every filter level is one node. Nodes live in one arena ([`Slab`]) and refer to each
//! other by `u32` index, so the trie has no recursive ownership: dropping it is flat, and
//! pruning after a remove walks up parent links instead of recursing. A node has
//!
//! - a dedicated `+` child,
//! - the entries whose filter ends at this node, and
//! - the entries whose filter ends with `#` right below it. `#` is never a node of its
//!   own: `a/#` matches `a`, `a/b` and `a/b/c`, which are exactly the topics that reach
//!   the node `a` at all.
//!
//! Literal children are not stored per node. Each distinct level string is interned once
//! as a `u32` level id, and one table maps `(parent, level id)` to the child. Matching a
//! topic therefore hashes each topic level once, however many branches are live, and
//! each step down a branch is one probe of an integer-keyed table: no string compare, no
//! per-node hash map. Both tables hash with a per-trie random seed, because clients
//! choose the level strings.
//!
//! Entries are a `Vec<(K, V)>` scanned linearly, with a hash index added once a filter
//! has more than [`ENTRIES_SCAN_MAX`] keys (a popular filter with thousands of
//! subscribers must not make SUBSCRIBE quadratic).
//!
//! Matching walks the topic level by level, keeping the set of nodes that match the
//! prefix so far (the literal child and the `+` child of each). It does not recurse and
//! allocates nothing unless more than [`FRONTIER_INLINE_MAX`] nodes match one prefix.
//! The set holds distinct nodes of one depth, so it is bounded by the trie's size.
//!
//! `$`-topics: filters starting with `+` or `#` do not match topic names starting with
//! `$` [MQTT-4.7.2-1]; the walk skips the root's `+` child and `#` entries for them.

use ahash::AHashMap;
use cutie_codec::{TopicFilter, TopicName};
use slab::Slab;
use std::fmt;
use std::hash::Hash;
use std::ops::ControlFlow;

/// Index of a node in [`Trie::nodes`].
type NodeId = u32;

/// Index of an interned level string in [`Levels`].
type LevelId = u32;

/// The root node: the empty prefix. It is never removed and never holds entries of its
/// own (every filter has at least one level).
const ROOT: NodeId = 0;

/// Above this many keys, a filter's entries get a hash index; below half of it, the
/// index is dropped again. Linear scans of a few `Copy` keys beat hashing them.
const ENTRIES_SCAN_MAX: usize = 16;

/// Nodes matching one topic prefix kept on the call stack before spilling to the heap.
const FRONTIER_INLINE_MAX: usize = 16;

/// A topic-filter trie mapping `(filter, key) -> value`.
///
/// `K` is small and `Copy` (a session or shard id); `V` is whatever the table needs.
pub struct Trie<K, V> {
    /// All nodes; [`ROOT`] is always present. Every other node is reachable from the
    /// root and is non-empty (holds entries or children): removals prune the rest.
    nodes: Slab<Node<K, V>>,
    /// Literal children of every node, keyed by [`edge`]`(parent, level)`.
    edges: AHashMap<u64, NodeId>,
    /// The level strings that label at least one edge.
    levels: Levels,
    /// Number of `(filter, key)` entries.
    entry_count: usize,
    /// Number of filters with at least one key.
    filter_count: usize,
}

/// The key of the literal edge from `parent` under `level` in [`Trie::edges`].
fn edge(parent: NodeId, level: LevelId) -> u64 {
    (u64::from(parent) << 32) | u64::from(level)
}

/// Narrows an arena index to the `u32` ids the tables store.
fn id32(index: usize) -> u32 {
    // invariant: 2^32 nodes or level strings would take hundreds of GiB; a shard that
    // gets there has broken its subscription limits long before.
    u32::try_from(index).expect("trie: more than 2^32 nodes or levels")
}

/// One level of a filter.
struct Node<K, V> {
    /// The node this one hangs from; the root's parent is itself. Lets pruning walk up.
    parent: NodeId,
    /// How many literal children this node has in [`Trie::edges`].
    literal_count: u32,
    /// The child under `+`.
    plus: Option<NodeId>,
    /// Entries whose filter is this node's path followed by `/#` (or just `#` at the
    /// root). They match every topic that reaches this node, including one that ends
    /// here (`a/#` matches `a`).
    hash: Entries<K, V>,
    /// Entries whose filter ends at this node.
    exact: Entries<K, V>,
}

impl<K, V> Node<K, V> {
    fn new(parent: NodeId) -> Self {
        Node {
            parent,
            literal_count: 0,
            plus: None,
            hash: Entries::new(),
            exact: Entries::new(),
        }
    }

    /// A node with nothing in it and nothing under it, which pruning removes.
    fn is_empty(&self) -> bool {
        self.exact.items.is_empty()
            && self.hash.items.is_empty()
            && self.plus.is_none()
            && self.literal_count == 0
    }
}

/// The interned level strings: each distinct literal level of the trie gets a small id.
struct Levels {
    /// Level string to id.
    ids: AHashMap<Box<str>, LevelId>,
    /// For each id, how many edges it labels; the id is freed at zero.
    edge_counts: Slab<u32>,
}

impl Levels {
    fn get(&self, level: &str) -> Option<LevelId> {
        self.ids.get(level).copied()
    }

    /// The id of `level`, counting one more edge labelled with it.
    fn acquire(&mut self, level: &str) -> LevelId {
        if let Some(&id) = self.ids.get(level) {
            self.edge_counts[id as usize] += 1;
            return id;
        }
        let id = id32(self.edge_counts.insert(1));
        self.ids.insert(level.into(), id);
        id
    }

    /// Counts one edge labelled `level` (with id `id`) fewer.
    fn release(&mut self, level: &str, id: LevelId) {
        let count = &mut self.edge_counts[id as usize];
        *count -= 1;
        if *count == 0 {
            self.edge_counts.remove(id as usize);
            let removed = self.ids.remove(level);
            assert_eq!(removed, Some(id), "trie: level {level:?} interned as {id}");
            if self.ids.len() * 4 < self.ids.capacity() {
                self.ids.shrink_to_fit();
            }
        }
    }
}

/// Which entry list of a node a filter ends in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The filter's last level is this node.
    Exact,
    /// The filter is this node's path followed by `#`.
    Hash,
}

/// The `(key, value)` pairs of one filter.
struct Entries<K, V> {
    /// The pairs, in no particular order; keys are distinct.
    items: Vec<(K, V)>,
    /// Position of each key in `items`, present while `items` is large.
    index: Option<Box<AHashMap<K, usize>>>,
}

impl<K, V> Entries<K, V> {
    fn new() -> Self {
        Entries { items: Vec::new(), index: None }
    }
}

impl<K: Copy + Eq + Hash, V> Entries<K, V> {
    fn position(&self, key: K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.items.iter().position(|(k, _)| *k == key),
        }
    }

    fn get(&self, key: K) -> Option<&V> {
        let i = self.position(key)?;
        Some(&self.items[i].1)
    }

    fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let i = self.position(key)?;
        Some(&mut self.items[i].1)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(key) {
            return Some(std::mem::replace(&mut self.items[i].1, value));
        }
        self.items.push((key, value));
        let len = self.items.len();
        match &mut self.index {
            Some(index) => {
                index.insert(key, len - 1);
            }
            None if len > ENTRIES_SCAN_MAX => {
                let index = self.items.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<V> {
        let i = match &mut self.index {
            Some(index) => index.remove(&key)?,
            None => self.items.iter().position(|(k, _)| *k == key)?,
        };
        let (_, value) = self.items.swap_remove(i);
        if let Some(index) = &mut self.index {
            if let Some((moved, _)) = self.items.get(i) {
                index.insert(*moved, i);
            }
            if self.items.len() <= ENTRIES_SCAN_MAX / 2 {
                self.index = None;
            }
        }
        // A filter that once had many subscribers gives the memory back.
        if self.items.len() <= self.items.capacity() / 4 {
            self.items.shrink_to(self.items.len() * 2);
        }
        Some(value)
    }
}

impl<K: Copy + Eq + Hash, V> Trie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        let mut nodes = Slab::new();
        let root = nodes.insert(Node::new(ROOT));
        assert_eq!(root, ROOT as usize, "the root is the first node of a fresh slab");
        Trie {
            nodes,
            edges: AHashMap::new(),
            levels: Levels { ids: AHashMap::new(), edge_counts: Slab::new() },
            entry_count: 0,
            filter_count: 0,
        }
    }

    /// Inserts or replaces the value of `key` under `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let (id, slot) = self.make_path(filter);
        let entries = self.entries_mut(id, slot);
        let was_empty = entries.items.is_empty();
        let previous = entries.insert(key, value);
        if previous.is_none() {
            self.entry_count += 1;
            if was_empty {
                self.filter_count += 1;
            }
        }
        previous
    }

    /// Removes `key` under `filter`; returns its value. Prunes nodes left empty.
    pub fn remove(&mut self, filter: &TopicFilter, key: K) -> Option<V> {
        let (id, slot) = self.find_path(filter)?;
        let entries = self.entries_mut(id, slot);
        let value = entries.remove(key)?;
        let now_empty = entries.items.is_empty();
        self.entry_count -= 1;
        if now_empty {
            self.filter_count -= 1;
            self.prune(id, filter, slot);
        }
        Some(value)
    }

    /// The value of `key` under exactly `filter` (no wildcard matching).
    pub fn get(&self, filter: &TopicFilter, key: K) -> Option<&V> {
        let (id, slot) = self.find_path(filter)?;
        let node = &self.nodes[id as usize];
        match slot {
            Slot::Exact => node.exact.get(key),
            Slot::Hash => node.hash.get(key),
        }
    }

    /// The value of `key` under exactly `filter` (no wildcard matching), mutably.
    pub fn get_mut(&mut self, filter: &TopicFilter, key: K) -> Option<&mut V> {
        let (id, slot) = self.find_path(filter)?;
        self.entries_mut(id, slot).get_mut(key)
    }

    /// Calls `f(key, value)` once for every `(filter, key)` entry whose filter matches
    /// `topic`. A key subscribed through several matching filters is visited once per
    /// filter (the caller dedups). The order is unspecified.
    pub fn for_each_match(&self, topic: &TopicName, mut f: impl FnMut(K, &V)) {
        let _ = self.walk(topic, |entries| {
            for (key, value) in entries {
                f(*key, value);
            }
            ControlFlow::Continue(())
        });
    }

    /// Whether any entry matches `topic`. Stops at the first one.
    pub fn has_match(&self, topic: &TopicName) -> bool {
        self.walk(topic, |_| ControlFlow::Break(())).is_break()
    }

    /// Number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.entry_count
    }

    /// Whether the trie holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entry_count == 0
    }

    /// Number of distinct filters with at least one key.
    pub fn filter_count(&self) -> usize {
        self.filter_count
    }

    fn entries_mut(&mut self, id: NodeId, slot: Slot) -> &mut Entries<K, V> {
        let node = &mut self.nodes[id as usize];
        match slot {
            Slot::Exact => &mut node.exact,
            Slot::Hash => &mut node.hash,
        }
    }

    /// The literal child of `parent` under `level`.
    fn literal_child(&self, parent: NodeId, level: &str) -> Option<NodeId> {
        let level = self.levels.get(level)?;
        self.edges.get(&edge(parent, level)).copied()
    }

    /// The node and slot of `filter`, if its path exists.
    fn find_path(&self, filter: &TopicFilter) -> Option<(NodeId, Slot)> {
        let mut id = ROOT;
        for level in filter.levels() {
            id = match level {
                // `#` is always the last level of a valid filter.
                "#" => return Some((id, Slot::Hash)),
                "+" => self.nodes[id as usize].plus?,
                _ => self.literal_child(id, level)?,
            };
        }
        Some((id, Slot::Exact))
    }

    /// The node and slot of `filter`, creating its path as needed.
    fn make_path(&mut self, filter: &TopicFilter) -> (NodeId, Slot) {
        let mut id = ROOT;
        for level in filter.levels() {
            let existing = match level {
                "#" => return (id, Slot::Hash),
                "+" => self.nodes[id as usize].plus,
                _ => self.literal_child(id, level),
            };
            id = match existing {
                Some(child) => child,
                None => {
                    let child = id32(self.nodes.insert(Node::new(id)));
                    if level == "+" {
                        self.nodes[id as usize].plus = Some(child);
                    } else {
                        let level = self.levels.acquire(level);
                        self.edges.insert(edge(id, level), child);
                        self.nodes[id as usize].literal_count += 1;
                    }
                    child
                }
            };
        }
        (id, Slot::Exact)
    }

    /// Removes `id` and its ancestors while they are empty. `id` is the node that
    /// `filter` ends in (`slot` says whether through a trailing `#`).
    fn prune(&mut self, mut id: NodeId, filter: &TopicFilter, slot: Slot) {
        // Walking up from `id`, each node is the child of its parent under the filter's
        // levels read from the end; a trailing `#` has no node of its own.
        let mut levels = filter.as_str().rsplit('/');
        if slot == Slot::Hash {
            levels.next();
        }
        while id != ROOT && self.nodes[id as usize].is_empty() {
            let parent = self.nodes.remove(id as usize).parent;
            match levels.next() {
                Some("+") => {
                    let node = &mut self.nodes[parent as usize];
                    assert_eq!(node.plus, Some(id), "trie: pruned + child is its parent's");
                    node.plus = None;
                }
                Some(level) => {
                    let level_id = self.levels.get(level);
                    let removed = level_id.and_then(|l| self.edges.remove(&edge(parent, l)));
                    assert_eq!(removed, Some(id), "trie: pruned child is its parent's");
                    if let Some(level_id) = level_id {
                        self.levels.release(level, level_id);
                    }
                    self.nodes[parent as usize].literal_count -= 1;
                    if self.edges.len() * 4 < self.edges.capacity() {
                        self.edges.shrink_to_fit();
                    }
                }
                None => unreachable!("trie: a filter's path is no deeper than its levels"),
            }
            id = parent;
        }
    }

    /// Calls `visit` with every non-empty entry list whose filter matches `topic`, until
    /// it breaks.
    fn walk(
        &self,
        topic: &TopicName,
        mut visit: impl FnMut(&[(K, V)]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // Filters starting with a wildcard do not match `$`-topics [MQTT-4.7.2-1]: at the
        // first level, skip the root's `#` entries and `+` child.
        let mut wildcards = !topic.is_dollar();
        // The nodes whose path matches the topic levels consumed so far.
        let mut frontier = Frontier::new();
        let mut next = Frontier::new();
        frontier.push(ROOT);
        for level in topic.levels() {
            // Hashed once per level, and only if some node here has literal children.
            let mut level_id = None;
            for id in frontier.iter() {
                let node = &self.nodes[id as usize];
                if wildcards {
                    if !node.hash.items.is_empty() {
                        visit(&node.hash.items)?;
                    }
                    if let Some(plus) = node.plus {
                        next.push(plus);
                    }
                }
                if node.literal_count > 0 {
                    let level_id = *level_id.get_or_insert_with(|| self.levels.get(level));
                    let Some(level_id) = level_id else { continue };
                    if let Some(&child) = self.edges.get(&edge(id, level_id)) {
                        next.push(child);
                    }
                }
            }
            if next.is_empty() {
                return ControlFlow::Continue(());
            }
            std::mem::swap(&mut frontier, &mut next);
            next.clear();
            wildcards = true;
        }
        // The topic ends here: `#` below these nodes matches the parent level too.
        for id in frontier.iter() {
            let node = &self.nodes[id as usize];
            if !node.hash.items.is_empty() {
                visit(&node.hash.items)?;
            }
            if !node.exact.items.is_empty() {
                visit(&node.exact.items)?;
            }
        }
        ControlFlow::Continue(())
    }
}

/// A set of node ids of one depth: a few inline, the rest on the heap.
struct Frontier {
    inline: [NodeId; FRONTIER_INLINE_MAX],
    /// How many ids the frontier holds, inline and spilled.
    len: usize,
    /// The ids after the first [`FRONTIER_INLINE_MAX`].
    spill: Vec<NodeId>,
}

impl Frontier {
    fn new() -> Self {
        Frontier { inline: [ROOT; FRONTIER_INLINE_MAX], len: 0, spill: Vec::new() }
    }

    fn push(&mut self, id: NodeId) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = id,
            None => self.spill.push(id),
        }
        self.len += 1;
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        let inline = &self.inline[..self.len.min(FRONTIER_INLINE_MAX)];
        inline.iter().chain(&self.spill).copied()
    }
}

impl<K: Copy + Eq + Hash, V> Default for Trie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for Trie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trie")
            .field("len", &self.entry_count)
            .field("filter_count", &self.filter_count)
            .field("node_count", &self.nodes.len())
            .field("level_count", &self.levels.ids.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutie_codec::matches;
    use proptest::prelude::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).expect("valid filter in test")
    }

    fn t(s: &str) -> TopicName {
        TopicName::try_from(s).expect("valid topic in test")
    }

    /// The `(key, value)` pairs matching `topic`, sorted.
    fn matched<K: Copy + Eq + Hash + Ord, V: Clone + Ord>(
        trie: &Trie<K, V>,
        topic: &TopicName,
    ) -> Vec<(K, V)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((k, v.clone())));
        out.sort();
        out
    }

    impl<K: Copy + Eq + Hash, V> Trie<K, V> {
        /// Checks every structural invariant; panics with the first one broken.
        fn check_invariants(&self) {
            let mut literal_children: AHashMap<NodeId, Vec<NodeId>> = AHashMap::new();
            let mut level_uses: AHashMap<LevelId, u32> = AHashMap::new();
            for (&key, &child) in &self.edges {
                let (parent, level) = ((key >> 32) as NodeId, key as LevelId);
                assert_eq!(self.nodes[child as usize].parent, parent, "parent link of {child}");
                literal_children.entry(parent).or_default().push(child);
                *level_uses.entry(level).or_default() += 1;
            }
            assert_eq!(self.levels.ids.len(), self.levels.edge_counts.len(), "level tables");
            for (_, &level) in &self.levels.ids {
                assert_eq!(
                    Some(&self.levels.edge_counts[level as usize]),
                    level_uses.get(&level),
                    "edge count of level {level}"
                );
            }
            assert_eq!(level_uses.len(), self.levels.ids.len(), "every edge level is interned");
            let mut reachable = 0;
            let mut entry_count = 0;
            let mut filter_count = 0;
            let mut stack = vec![ROOT];
            while let Some(id) = stack.pop() {
                reachable += 1;
                let node = &self.nodes[id as usize];
                if id == ROOT {
                    assert!(node.exact.items.is_empty(), "root holds no exact entries");
                } else {
                    assert!(!node.is_empty(), "empty node {id} was not pruned");
                }
                for entries in [&node.exact, &node.hash] {
                    entry_count += entries.items.len();
                    filter_count += usize::from(!entries.items.is_empty());
                    match &entries.index {
                        Some(index) => {
                            assert!(entries.items.len() > ENTRIES_SCAN_MAX / 2);
                            assert_eq!(index.len(), entries.items.len());
                            for (i, (k, _)) in entries.items.iter().enumerate() {
                                assert_eq!(index.get(k), Some(&i), "index out of date");
                            }
                        }
                        None => assert!(entries.items.len() <= ENTRIES_SCAN_MAX),
                    }
                    for (i, (k, _)) in entries.items.iter().enumerate() {
                        assert!(
                            entries.items[..i].iter().all(|(other, _)| other != k),
                            "duplicate key"
                        );
                    }
                }
                let literal = literal_children.get(&id).map_or(&[][..], Vec::as_slice);
                assert_eq!(node.literal_count as usize, literal.len(), "literal_count of {id}");
                if let Some(plus) = node.plus {
                    assert_eq!(self.nodes[plus as usize].parent, id, "parent link of {plus}");
                    stack.push(plus);
                }
                stack.extend_from_slice(literal);
            }
            assert_eq!(reachable, self.nodes.len(), "unreachable nodes in the arena");
            assert_eq!(entry_count, self.entry_count, "len");
            assert_eq!(filter_count, self.filter_count, "filter_count");
        }
    }

    #[test]
    fn matching_table() {
        let filters = [
            "a/b/c", "a/+/c", "a/+", "a/#", "#", "+", "+/+", "/+", "a/b/", "a/+/", "$SYS/#",
            "$SYS/+", "+/x", "a/+/+", "sport/tennis/#", "/", "//", "+/#", "a/b/c/#",
        ];
        let mut trie = Trie::new();
        for (key, filter) in filters.iter().enumerate() {
            assert_eq!(trie.insert(&f(filter), key, *filter), None);
        }
        trie.check_invariants();
        let topics = [
            "a", "a/b", "a/b/c", "a/b/c/d", "a/b/", "/a", "/", "//", "$SYS/x", "$SYS", "$SYS/x/y",
            "x", "b/x", "sport/tennis", "sport/tennis/player1", "sport", "$", "a//c",
        ];
        for topic in topics {
            let expected: Vec<(usize, &str)> = filters
                .iter()
                .enumerate()
                .filter(|(_, filter)| matches(&f(filter), &t(topic)))
                .map(|(key, filter)| (key, *filter))
                .collect();
            assert_eq!(matched(&trie, &t(topic)), expected, "topic {topic:?}");
            assert_eq!(trie.has_match(&t(topic)), !expected.is_empty(), "topic {topic:?}");
        }
    }

    #[test]
    fn wildcard_filters_do_not_match_dollar_topics() {
        let table: [(&str, &str, bool); 8] = [
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("$SYS/#", "$SYS", true),
            ("a/#", "a/$SYS", true),
            ("a/+", "a/$x", true),
        ];
        for (filter, topic, expected) in table {
            let mut trie = Trie::new();
            trie.insert(&f(filter), 1u32, ());
            assert_eq!(trie.has_match(&t(topic)), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn hash_matches_the_parent_level() {
        let mut trie = Trie::new();
        trie.insert(&f("sport/tennis/#"), 1u32, ());
        assert!(trie.has_match(&t("sport/tennis")));
        assert!(trie.has_match(&t("sport/tennis/player1")));
        assert!(trie.has_match(&t("sport/tennis/player1/ranking")));
        assert!(!trie.has_match(&t("sport")));
        assert!(!trie.has_match(&t("sport/tennisx")));
    }

    #[test]
    fn empty_levels_are_real_levels() {
        let table: [(&str, &str, bool); 8] = [
            ("/a", "/a", true),
            ("/a", "a", false),
            ("+/a", "/a", true),
            ("a/", "a", false),
            ("a/+", "a/", true),
            ("a//b", "a/b", false),
            ("a/+/b", "a//b", true),
            ("/", "/", true),
        ];
        for (filter, topic, expected) in table {
            let mut trie = Trie::new();
            trie.insert(&f(filter), 1u32, ());
            assert_eq!(trie.has_match(&t(topic)), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn insert_replaces_the_value_of_the_same_key() {
        let mut trie = Trie::new();
        assert_eq!(trie.insert(&f("a/+"), 7u32, 0u8), None);
        assert_eq!(trie.insert(&f("a/+"), 7, 1), Some(0));
        assert_eq!((trie.len(), trie.filter_count()), (1, 1));
        assert_eq!(trie.get(&f("a/+"), 7), Some(&1));
        *trie.get_mut(&f("a/+"), 7).expect("present") = 2;
        assert_eq!(matched(&trie, &t("a/b")), vec![(7, 2)]);
    }

    #[test]
    fn get_is_exact_not_wildcard() {
        let mut trie = Trie::new();
        trie.insert(&f("a/+"), 1u32, 'x');
        trie.insert(&f("a/#"), 1, 'y');
        assert_eq!(trie.get(&f("a/+"), 1), Some(&'x'));
        assert_eq!(trie.get(&f("a/#"), 1), Some(&'y'));
        assert_eq!(trie.get(&f("a/b"), 1), None);
        assert_eq!(trie.get(&f("a"), 1), None);
        assert_eq!(trie.get(&f("a/+"), 2), None);
    }

    #[test]
    fn a_key_under_several_matching_filters_is_visited_once_per_filter() {
        let mut trie = Trie::new();
        for filter in ["a/b", "a/+", "a/#", "#"] {
            trie.insert(&f(filter), 1u32, filter);
        }
        trie.insert(&f("a/c"), 2, "a/c");
        assert_eq!(
            matched(&trie, &t("a/b")),
            vec![(1, "#"), (1, "a/#"), (1, "a/+"), (1, "a/b")]
        );
        assert_eq!((trie.len(), trie.filter_count()), (5, 5));
    }

    #[test]
    fn removing_everything_prunes_back_to_the_root() {
        let filters = ["a/b/c", "a/+/c", "a/#", "#", "+", "/", "a//", "+/+/+/#", "$SYS/+"];
        let mut trie = Trie::new();
        for (i, filter) in filters.iter().enumerate() {
            for key in 0..3u32 {
                trie.insert(&f(filter), key, i);
            }
        }
        assert_eq!((trie.len(), trie.filter_count()), (27, 9));
        trie.check_invariants();
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(trie.remove(&f(filter), 9), None, "absent key");
            for key in 0..3u32 {
                assert_eq!(trie.remove(&f(filter), key), Some(i));
                assert_eq!(trie.remove(&f(filter), key), None, "removed twice");
                trie.check_invariants();
            }
        }
        assert_eq!((trie.len(), trie.filter_count()), (0, 0));
        assert!(trie.is_empty());
        assert_eq!(trie.nodes.len(), 1, "only the root is left");
        assert!(trie.edges.is_empty() && trie.levels.ids.is_empty(), "no edges or levels left");
        assert!(!trie.has_match(&t("a/b/c")));
    }

    #[test]
    fn removing_an_absent_filter_changes_nothing() {
        let mut trie = Trie::new();
        trie.insert(&f("a/b"), 1u32, ());
        for filter in ["a", "a/b/c", "a/+", "a/#", "#", "b"] {
            assert_eq!(trie.remove(&f(filter), 1), None, "{filter}");
        }
        assert_eq!((trie.len(), trie.filter_count(), trie.nodes.len()), (1, 1, 3));
        trie.check_invariants();
    }

    #[test]
    fn a_popular_filter_indexes_its_keys() {
        let mut trie = Trie::new();
        let filter = f("news/+");
        for key in 0..1000u32 {
            assert_eq!(trie.insert(&filter, key, key * 2), None);
        }
        trie.check_invariants();
        assert_eq!(trie.get(&filter, 500), Some(&1000));
        for key in (0..1000u32).step_by(2) {
            assert_eq!(trie.remove(&filter, key), Some(key * 2));
        }
        trie.check_invariants();
        assert_eq!(matched(&trie, &t("news/x")).len(), 500);
        for key in (1..1000u32).step_by(2) {
            assert_eq!(trie.remove(&filter, key), Some(key * 2));
            trie.check_invariants();
        }
        assert_eq!((trie.len(), trie.filter_count(), trie.nodes.len()), (0, 0, 1));
    }

    /// The deepest filter and topic the codec admits: no recursion to overflow when
    /// matching, removing or dropping.
    #[test]
    fn the_deepest_filters_and_topics_do_not_overflow_the_stack() {
        let levels = 32_768;
        let plus = f(&vec!["+"; levels].join("/"));
        let empty = f(&"/".repeat(levels - 1));
        let topic = t(&"/".repeat(levels - 1));
        let mut trie = Trie::new();
        trie.insert(&plus, 1u32, ());
        trie.insert(&empty, 2, ());
        trie.insert(&f("#"), 3, ());
        assert_eq!(matched(&trie, &topic), vec![(1, ()), (2, ()), (3, ())]);
        let longest = t(&"/".repeat(65_534));
        assert_eq!(matched(&trie, &longest), vec![(3, ())]);
        assert_eq!(trie.remove(&plus, 1), Some(()));
        trie.check_invariants();
        drop(trie);
    }

    #[test]
    fn debug_is_a_summary() {
        let mut trie = Trie::new();
        trie.insert(&f("a/b"), 1u32, ());
        assert_eq!(format!("{trie:?}"), "Trie { len: 1, filter_count: 1, node_count: 3, level_count: 2 }");
    }

    // Property test: random inserts and removes against a naive list of
    // `(filter, key, value)` matched with `cutie_codec::matches`.

    const FILTER_LEVELS: [&str; 6] = ["a", "b", "c", "", "$s", "+"];
    const TOPIC_LEVELS: [&str; 5] = ["a", "b", "c", "", "$s"];

    fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
        (prop::collection::vec(prop::sample::select(&FILTER_LEVELS[..]), 0..4), any::<bool>())
            .prop_filter_map("a filter is not empty", |(mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                TopicFilter::try_from(levels.join("/")).ok()
            })
    }

    fn topic_strategy() -> impl Strategy<Value = TopicName> {
        prop::collection::vec(prop::sample::select(&TOPIC_LEVELS[..]), 1..5)
            .prop_filter_map("a topic is not empty", |levels| {
                TopicName::try_from(levels.join("/")).ok()
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(TopicFilter, u8, u32),
        Remove(TopicFilter, u8),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (filter_strategy(), 0..4u8, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            2 => (filter_strategy(), 0..4u8).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn trie_agrees_with_a_naive_model(
            ops in prop::collection::vec(op_strategy(), 1..60),
            topics in prop::collection::vec(topic_strategy(), 8),
        ) {
            let mut trie = Trie::new();
            let mut model: Vec<(TopicFilter, u8, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(filter, key, value) => {
                        let at = model.iter().position(|(f, k, _)| *f == filter && *k == key);
                        let expected = match at {
                            Some(i) => Some(std::mem::replace(&mut model[i].2, value)),
                            None => {
                                model.push((filter.clone(), key, value));
                                None
                            }
                        };
                        prop_assert_eq!(trie.insert(&filter, key, value), expected);
                    }
                    Op::Remove(filter, key) => {
                        let at = model.iter().position(|(f, k, _)| *f == filter && *k == key);
                        let expected = at.map(|i| model.swap_remove(i).2);
                        prop_assert_eq!(trie.remove(&filter, key), expected);
                        prop_assert_eq!(trie.get(&filter, key), None);
                    }
                }
                trie.check_invariants();
                prop_assert_eq!(trie.len(), model.len());
                let mut filters: Vec<&TopicFilter> = model.iter().map(|(f, _, _)| f).collect();
                filters.sort();
                filters.dedup();
                prop_assert_eq!(trie.filter_count(), filters.len());
                for (filter, key, value) in &model {
                    prop_assert_eq!(trie.get(filter, *key), Some(value));
                }
                for topic in &topics {
                    let mut expected: Vec<(u8, u32)> = model
                        .iter()
                        .filter(|(f, _, _)| matches(f, topic))
                        .map(|(_, k, v)| (*k, *v))
                        .collect();
                    expected.sort();
                    prop_assert_eq!(&matched(&trie, topic), &expected, "topic {:?}", topic);
                    prop_assert_eq!(trie.has_match(topic), !expected.is_empty());
                }
            }
        }
    }
}
