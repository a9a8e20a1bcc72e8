//! A topic-filter trie: which `(filter, key)` entries match a topic name.
//!
//! One structure serves two tables on a shard: the session subscriptions (key: a local
//! session, value: the granted QoS) and the shard-interest table (key: a peer shard,
//! value: how many of its filters are there). Matching is the hot path of every PUBLISH;
//! subscribing and unsubscribing are not.
//!
//! # Shape and cost
//!
//! Every filter level is one node. A node has
//!
//! - its literal children, held inline in a hash map keyed by the level. Levels of up
//!   to `LEVEL_INLINE_MAX` bytes are stored in the key itself, so a lookup reads the
//!   table's control bytes and one bucket, which holds both the level and the child;
//! - a dedicated `+` child;
//! - the entries whose filter ends at this node; and
//! - the entries whose filter ends with `#` right below it. `#` is never a node of its
//!   own: `a/#` matches `a`, `a/b` and `a/b/c`, which are exactly the topics that reach
//!   the node `a` at all.
//!
//! Levels are hashed with a per-process random seed (clients choose them, so a fixed
//! seed would let them pile a node's children into one probe sequence) held in a
//! zero-sized hasher, which keeps a node at 72 bytes for small `K` and `V`.
//!
//! An entry list holds one `(key, value)` pair inline (most filters have one key: a
//! device subscribing to its own topics) and boxes a `Vec` for more, scanned linearly,
//! with a hash index once a filter has more than `ENTRIES_SCAN_MAX` keys (a popular
//! filter with thousands of subscribers must not make SUBSCRIBE quadratic).
//!
//! Matching one topic costs one hash lookup per topic level on each live branch (the
//! literal child and the `+` child), plus the entries visited. It allocates nothing
//! unless more than `WALK_INLINE_MAX` branches are pending at once.
//!
//! Nothing recurses: a filter may have 32,768 levels and a topic 65,536 (65,535 bytes
//! of `/`), too deep for the call stack. Matching keeps its pending branches on an
//! explicit stack (never more than the topic has levels), removing walks the path
//! twice instead of unwinding it, and dropping a node moves its descendants onto a heap
//! stack first.
//!
//! `$`-topics: filters starting with `+` or `#` do not match topic names starting with
//! `$` [MQTT-4.7.2-1]; the walk skips the root's `+` child and `#` entries for them.

use ahash::{AHashMap, AHasher};
use cutie_codec::{TopicFilter, TopicName};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::OnceLock;

/// Above this many keys, a filter's entries get a hash index; below half of it, the
/// index is dropped again. Linear scans of a few `Copy` keys beat hashing them.
const ENTRIES_SCAN_MAX: usize = 16;

/// Pending branches of a match walk kept on the call stack before spilling to the heap.
const WALK_INLINE_MAX: usize = 8;

/// Literal levels up to this many bytes live inside the hash-map key (24 bytes in all,
/// the size of the boxed form).
const LEVEL_INLINE_MAX: usize = 22;

/// A topic-filter trie mapping `(filter, key) -> value`.
///
/// `K` is small and `Copy` (a session or shard id); `V` is whatever the table needs.
pub struct Trie<K, V> {
    /// The empty prefix. It never holds exact entries (every filter has a level). Every
    /// other node is non-empty (holds entries or children): removals prune the rest.
    root: Node<K, V>,
    /// Number of `(filter, key)` entries.
    entry_count: usize,
    /// Number of filters with at least one key.
    filter_count: usize,
}

/// One level of a filter.
struct Node<K, V> {
    /// Children under a literal level (the empty level included).
    literal: HashMap<Level, Node<K, V>, LevelHasher>,
    /// The child under `+`.
    plus: Option<Box<Node<K, V>>>,
    /// Entries whose filter is this node's path followed by `/#` (or just `#` at the
    /// root). They match every topic that reaches this node, including one that ends
    /// here (`a/#` matches `a`).
    hash: Entries<K, V>,
    /// Entries whose filter ends at this node.
    exact: Entries<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            literal: HashMap::default(),
            plus: None,
            hash: Entries::Empty,
            exact: Entries::Empty,
        }
    }

    fn child_count(&self) -> usize {
        self.literal.len() + usize::from(self.plus.is_some())
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            _ => literal_child(self, level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            _ => self.literal.get_mut(level.as_bytes()),
        }
    }

    fn entries_mut(&mut self, slot: Slot) -> &mut Entries<K, V> {
        match slot {
            Slot::Exact => &mut self.exact,
            Slot::Hash => &mut self.hash,
        }
    }

    /// Moves this node's children onto `stack`.
    fn take_children(&mut self, stack: &mut Vec<Node<K, V>>) {
        stack.extend(self.literal.drain().map(|(_, child)| child));
        if let Some(plus) = self.plus.take() {
            stack.push(*plus);
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Drops the subtree without recursion: a chain of 32,768 levels would overflow the
    /// call stack otherwise. Each node popped here has no children left when it drops.
    fn drop(&mut self) {
        if self.literal.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
        }
    }
}

/// A literal filter level as a hash-map key; levels of up to [`LEVEL_INLINE_MAX`] bytes
/// are stored inline, so comparing one during a lookup reads no other memory.
enum Level {
    Inline {
        len: u8,
        bytes: [u8; LEVEL_INLINE_MAX],
    },
    Boxed(Box<[u8]>),
}

impl Level {
    fn new(level: &str) -> Self {
        let level = level.as_bytes();
        match u8::try_from(level.len()) {
            Ok(len) if level.len() <= LEVEL_INLINE_MAX => {
                let mut bytes = [0; LEVEL_INLINE_MAX];
                bytes[..level.len()].copy_from_slice(level);
                Level::Inline { len, bytes }
            }
            _ => Level::Boxed(level.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Level::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Level::Boxed(bytes) => bytes,
        }
    }
}

// `Hash` and `Eq` agree with those of `[u8]`, as `Borrow` requires: lookups go by the
// topic level's bytes, with no key built.
impl Borrow<[u8]> for Level {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for Level {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Level {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Level {}

/// The literal child of `node` under `level`.
fn literal_child<'a, K, V>(node: &'a Node<K, V>, level: &str) -> Option<&'a Node<K, V>> {
    if node.literal.is_empty() {
        return None;
    }
    node.literal.get(level.as_bytes())
}

/// Hashes literal levels with a per-process random seed (clients choose the level
/// strings, so a fixed seed would let them collide a node's children on purpose). A
/// zero-sized builder keeps it out of every node.
#[derive(Clone, Copy, Default)]
struct LevelHasher;

impl BuildHasher for LevelHasher {
    type Hasher = AHasher;

    fn build_hasher(&self) -> AHasher {
        static SEED: OnceLock<ahash::RandomState> = OnceLock::new();
        SEED.get_or_init(ahash::RandomState::new).build_hasher()
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

/// A filter split into the levels of the node it ends at and the entry list there. A
/// valid filter has `#` only as its whole last level ("#" or ".../#").
fn path(filter: &TopicFilter) -> (impl Iterator<Item = &str> + Clone, Slot) {
    let filter_str = filter.as_str();
    let slot = if filter_str == "#" || filter_str.ends_with("/#") {
        Slot::Hash
    } else {
        Slot::Exact
    };
    (filter.levels().filter(|level| *level != "#"), slot)
}

/// The `(key, value)` pairs of one filter; keys are distinct, order is unspecified.
///
/// Most filters have one key (a device subscribing to its own topics), so one pair is
/// held inline: matching it reads nothing beyond the node. More are boxed, which keeps
/// every node small.
enum Entries<K, V> {
    Empty,
    One((K, V)),
    Many(Box<ManyEntries<K, V>>),
}

/// Two pairs or more.
struct ManyEntries<K, V> {
    items: Vec<(K, V)>,
    /// Position of each key in `items`, present while `items` is large.
    index: Option<AHashMap<K, usize>>,
}

impl<K, V> Entries<K, V> {
    fn as_slice(&self) -> &[(K, V)] {
        match self {
            Entries::Empty => &[],
            Entries::One(pair) => std::slice::from_ref(pair),
            Entries::Many(many) => &many.items,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Entries::Empty)
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

impl<K: Copy + Eq + Hash, V> Entries<K, V> {
    fn position(&self, key: K) -> Option<usize> {
        if let Entries::Many(many) = self {
            if let Some(index) = &many.index {
                return index.get(&key).copied();
            }
        }
        self.as_slice().iter().position(|(k, _)| *k == key)
    }

    fn get(&self, key: K) -> Option<&V> {
        let i = self.position(key)?;
        Some(&self.as_slice()[i].1)
    }

    fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let i = self.position(key)?;
        match self {
            Entries::Empty => None,
            Entries::One((_, value)) => Some(value),
            Entries::Many(many) => Some(&mut many.items[i].1),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(previous) = self.get_mut(key) {
            return Some(std::mem::replace(previous, value));
        }
        match self {
            Entries::Many(many) => {
                let ManyEntries { items, index } = &mut **many;
                items.push((key, value));
                match index {
                    Some(index) => {
                        index.insert(key, items.len() - 1);
                    }
                    None if items.len() > ENTRIES_SCAN_MAX => {
                        let positions = items.iter().enumerate().map(|(i, (k, _))| (*k, i));
                        *index = Some(positions.collect());
                    }
                    None => {}
                }
            }
            // Empty or one pair: grow by one.
            _ => {
                *self = match std::mem::replace(self, Entries::Empty) {
                    Entries::One(first) => Entries::Many(Box::new(ManyEntries {
                        items: vec![first, (key, value)],
                        index: None,
                    })),
                    _ => Entries::One((key, value)),
                };
            }
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<V> {
        let i = self.position(key)?;
        let Entries::Many(many) = self else {
            // The one pair is `key`'s.
            return match std::mem::replace(self, Entries::Empty) {
                Entries::One((_, value)) => Some(value),
                _ => None,
            };
        };
        let ManyEntries { items, index } = &mut **many;
        let (_, value) = items.swap_remove(i);
        if let Some(index_map) = index {
            index_map.remove(&key);
            if let Some((moved, _)) = items.get(i) {
                index_map.insert(*moved, i);
            }
            if items.len() <= ENTRIES_SCAN_MAX / 2 {
                *index = None;
            }
        }
        if items.len() == 1 {
            if let Some(last) = items.pop() {
                *self = Entries::One(last);
            }
        } else if items.len() <= items.capacity() / 4 {
            // A filter that once had many subscribers gives the memory back.
            items.shrink_to(items.len() * 2);
        }
        Some(value)
    }
}

impl<K: Copy + Eq + Hash, V> Trie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Trie {
            root: Node::new(),
            entry_count: 0,
            filter_count: 0,
        }
    }

    /// Inserts or replaces the value of `key` under `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let (levels, slot) = path(filter);
        let mut node = &mut self.root;
        for level in levels {
            node = match level {
                "+" => node.plus.get_or_insert_with(|| Box::new(Node::new())),
                _ => node
                    .literal
                    .entry(Level::new(level))
                    .or_insert_with(Node::new),
            };
        }
        let entries = node.entries_mut(slot);
        let was_empty = entries.is_empty();
        let previous = entries.insert(key, value);
        if previous.is_none() {
            self.entry_count += 1;
            self.filter_count += usize::from(was_empty);
        }
        previous
    }

    /// Removes `key` under `filter`; returns its value. Prunes nodes left empty.
    pub fn remove(&mut self, filter: &TopicFilter, key: K) -> Option<V> {
        // First pass, read-only: is the entry there, and which is the highest node on
        // its path that removing it leaves empty (`prune_depth`, the root being 0)?
        let (levels, slot) = path(filter);
        let mut node = &self.root;
        let mut prune_depth = None;
        let mut depth = 0;
        for level in levels.clone() {
            let only_the_path =
                node.exact.is_empty() && node.hash.is_empty() && node.child_count() == 1;
            if depth > 0 && only_the_path {
                prune_depth.get_or_insert(depth);
            } else {
                prune_depth = None;
            }
            node = node.child(level)?;
            depth += 1;
        }
        let (entries, others) = match slot {
            Slot::Exact => (&node.exact, &node.hash),
            Slot::Hash => (&node.hash, &node.exact),
        };
        entries.position(key)?;
        let filter_emptied = entries.len() == 1;
        let left_empty = filter_emptied && others.is_empty() && node.child_count() == 0;
        if depth > 0 && left_empty {
            prune_depth.get_or_insert(depth);
        } else {
            prune_depth = None;
        }

        // Second pass: take the entry out, cutting off the emptied branch if there is one.
        // The first pass found every node on the path, so no `?` below returns early.
        let mut levels = levels;
        let mut node = &mut self.root;
        let value = match prune_depth {
            None => {
                for level in levels {
                    node = node.child_mut(level)?;
                }
                node.entries_mut(slot).remove(key)?
            }
            Some(prune_depth) => {
                for level in levels.by_ref().take(prune_depth - 1) {
                    node = node.child_mut(level)?;
                }
                let mut branch = match levels.next()? {
                    "+" => *node.plus.take()?,
                    level => node.literal.remove(level.as_bytes())?,
                };
                if node.literal.len() * 4 < node.literal.capacity() {
                    node.literal.shrink_to_fit();
                }
                let mut node = &mut branch;
                for level in levels {
                    node = node.child_mut(level)?;
                }
                node.entries_mut(slot).remove(key)?
            }
        };
        self.entry_count -= 1;
        self.filter_count -= usize::from(filter_emptied);
        Some(value)
    }

    /// The value of `key` under exactly `filter` (no wildcard matching).
    pub fn get(&self, filter: &TopicFilter, key: K) -> Option<&V> {
        let (levels, slot) = path(filter);
        let mut node = &self.root;
        for level in levels {
            node = node.child(level)?;
        }
        match slot {
            Slot::Exact => node.exact.get(key),
            Slot::Hash => node.hash.get(key),
        }
    }

    /// The value of `key` under exactly `filter` (no wildcard matching), mutably.
    pub fn get_mut(&mut self, filter: &TopicFilter, key: K) -> Option<&mut V> {
        let (levels, slot) = path(filter);
        let mut node = &mut self.root;
        for level in levels {
            node = node.child_mut(level)?;
        }
        node.entries_mut(slot).get_mut(key)
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

    /// Calls `visit` with every non-empty entry list whose filter matches `topic`, until
    /// it breaks.
    fn walk<'a>(
        &'a self,
        topic: &TopicName,
        mut visit: impl FnMut(&'a [(K, V)]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let topic = topic.as_str();
        // Filters starting with a wildcard do not match `$`-topics [MQTT-4.7.2-1].
        let dollar = topic.starts_with('$');
        // A pending branch is a node and the byte offset in `topic` of the level to match
        // under it, or `DONE` once every level is consumed. Offset 0 is the root's.
        const DONE: usize = usize::MAX;
        let mut stack = WalkStack::new(&self.root);
        let mut next = Some((&self.root, 0));
        while let Some((node, start)) = next.take().or_else(|| stack.pop()) {
            let wildcards = !(dollar && start == 0);
            if wildcards && !node.hash.is_empty() {
                visit(node.hash.as_slice())?;
            }
            if start == DONE {
                if !node.exact.is_empty() {
                    visit(node.exact.as_slice())?;
                }
                continue;
            }
            let rest = &topic[start..];
            // Levels are short: a plain scan beats `memchr`'s setup.
            let (level, after) = match rest.bytes().position(|b| b == b'/') {
                Some(i) => (&rest[..i], start + i + 1),
                None => (rest, DONE),
            };
            if wildcards {
                next = node.plus.as_deref().map(|plus| (plus, after));
            }
            if let Some(child) = literal_child(node, level) {
                match next {
                    None => next = Some((child, after)),
                    Some(_) => stack.push((child, after)),
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// The pending branches of a match walk: a few inline, the rest on the heap.
struct WalkStack<'a, K, V> {
    inline: [(&'a Node<K, V>, usize); WALK_INLINE_MAX],
    inline_len: usize,
    /// Branches above the inline ones; only non-empty while `inline` is full.
    spill: Vec<(&'a Node<K, V>, usize)>,
}

impl<'a, K, V> WalkStack<'a, K, V> {
    fn new(filler: &'a Node<K, V>) -> Self {
        WalkStack {
            inline: [(filler, 0); WALK_INLINE_MAX],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, branch: (&'a Node<K, V>, usize)) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = branch;
                self.inline_len += 1;
            }
            None => self.spill.push(branch),
        }
    }

    fn pop(&mut self) -> Option<(&'a Node<K, V>, usize)> {
        if let Some(branch) = self.spill.pop() {
            return Some(branch);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        Some(self.inline[self.inline_len])
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
            .finish_non_exhaustive()
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
        /// Checks every structural invariant, panicking at the first one broken, and
        /// returns the number of nodes.
        fn check_invariants(&self) -> usize {
            assert!(
                self.root.exact.is_empty(),
                "the root holds no exact entries"
            );
            let mut node_count = 0;
            let mut entry_count = 0;
            let mut filter_count = 0;
            let mut stack = vec![&self.root];
            while let Some(node) = stack.pop() {
                node_count += 1;
                let empty = node.exact.is_empty() && node.hash.is_empty();
                if node_count > 1 {
                    assert!(
                        !empty || node.child_count() > 0,
                        "an empty node was not pruned"
                    );
                }
                for entries in [&node.exact, &node.hash] {
                    let items = entries.as_slice();
                    entry_count += items.len();
                    filter_count += usize::from(!items.is_empty());
                    for (i, (k, _)) in items.iter().enumerate() {
                        assert!(
                            items[..i].iter().all(|(other, _)| other != k),
                            "duplicate key"
                        );
                    }
                    let Entries::Many(many) = entries else {
                        continue;
                    };
                    assert!(many.items.len() >= 2, "a short list is not boxed");
                    match &many.index {
                        Some(index) => {
                            assert!(many.items.len() > ENTRIES_SCAN_MAX / 2, "index kept");
                            assert_eq!(index.len(), many.items.len(), "index size");
                            for (i, (k, _)) in many.items.iter().enumerate() {
                                assert_eq!(index.get(k), Some(&i), "index out of date");
                            }
                        }
                        None => assert!(many.items.len() <= ENTRIES_SCAN_MAX, "index missing"),
                    }
                }
                for (level, child) in &node.literal {
                    let inline = matches!(level, Level::Inline { .. });
                    assert_eq!(
                        inline,
                        level.as_bytes().len() <= LEVEL_INLINE_MAX,
                        "level form"
                    );
                    stack.push(child);
                }
                stack.extend(node.plus.as_deref());
            }
            assert_eq!(entry_count, self.entry_count, "len");
            assert_eq!(filter_count, self.filter_count, "filter_count");
            node_count
        }
    }

    #[test]
    fn matching_table() {
        let filters = [
            "a/b/c",
            "a/+/c",
            "a/+",
            "a/#",
            "#",
            "+",
            "+/+",
            "/+",
            "a/b/",
            "a/+/",
            "$SYS/#",
            "$SYS/+",
            "+/x",
            "a/+/+",
            "sport/tennis/#",
            "/",
            "//",
            "+/#",
            "a/b/c/#",
        ];
        let mut trie = Trie::new();
        for (key, filter) in filters.iter().enumerate() {
            assert_eq!(trie.insert(&f(filter), key, *filter), None);
        }
        trie.check_invariants();
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/d",
            "a/b/",
            "/a",
            "/",
            "//",
            "$SYS/x",
            "$SYS",
            "$SYS/x/y",
            "x",
            "b/x",
            "sport/tennis",
            "sport/tennis/player1",
            "sport",
            "$",
            "a//c",
        ];
        for topic in topics {
            let expected: Vec<(usize, &str)> = filters
                .iter()
                .enumerate()
                .filter(|(_, filter)| matches(&f(filter), &t(topic)))
                .map(|(key, filter)| (key, *filter))
                .collect();
            assert_eq!(matched(&trie, &t(topic)), expected, "topic {topic:?}");
            assert_eq!(
                trie.has_match(&t(topic)),
                !expected.is_empty(),
                "topic {topic:?}"
            );
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
        let filters = [
            "a/b/c", "a/+/c", "a/#", "#", "+", "/", "a//", "+/+/+/#", "$SYS/+",
        ];
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
        assert_eq!(trie.check_invariants(), 1, "only the root is left");
        assert!(!trie.has_match(&t("a/b/c")));
    }

    #[test]
    fn removing_an_absent_filter_changes_nothing() {
        let mut trie = Trie::new();
        trie.insert(&f("a/b"), 1u32, ());
        for filter in ["a", "a/b/c", "a/+", "a/#", "#", "b"] {
            assert_eq!(trie.remove(&f(filter), 1), None, "{filter}");
        }
        assert_eq!(
            (trie.len(), trie.filter_count(), trie.check_invariants()),
            (1, 1, 3)
        );
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
        *trie.get_mut(&filter, 500).expect("present") = 1;
        assert_eq!(trie.get(&filter, 500), Some(&1));
        *trie.get_mut(&filter, 500).expect("present") = 1000;
        for key in (0..1000u32).step_by(2) {
            assert_eq!(trie.remove(&filter, key), Some(key * 2));
        }
        trie.check_invariants();
        assert_eq!(matched(&trie, &t("news/x")).len(), 500);
        for key in (1..1000u32).step_by(2) {
            assert_eq!(trie.remove(&filter, key), Some(key * 2));
            trie.check_invariants();
        }
        assert_eq!(
            (trie.len(), trie.filter_count(), trie.check_invariants()),
            (0, 0, 1)
        );
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
    fn long_levels_match_like_short_ones() {
        let long = "l".repeat(LEVEL_INLINE_MAX + 1);
        let short = "s".repeat(LEVEL_INLINE_MAX);
        let mut trie = Trie::new();
        trie.insert(&f(&format!("{long}/{short}")), 1u32, ());
        trie.insert(&f(&format!("{short}/{long}/#")), 2, ());
        assert_eq!(
            matched(&trie, &t(&format!("{long}/{short}"))),
            vec![(1, ())]
        );
        assert_eq!(
            matched(&trie, &t(&format!("{short}/{long}"))),
            vec![(2, ())]
        );
        assert!(!trie.has_match(&t(&format!("{long}x/{short}"))));
        assert!(!trie.has_match(&t(&format!("{short}/{long}x"))));
        trie.check_invariants();
        assert_eq!(trie.remove(&f(&format!("{long}/{short}")), 1), Some(()));
        assert_eq!(trie.remove(&f(&format!("{short}/{long}/#")), 2), Some(()));
        assert_eq!(trie.check_invariants(), 1);
    }

    #[test]
    fn debug_is_a_summary() {
        let mut trie = Trie::new();
        trie.insert(&f("a/b"), 1u32, ());
        assert_eq!(format!("{trie:?}"), "Trie { len: 1, filter_count: 1, .. }");
    }

    // Property test: random inserts and removes against a naive list of
    // `(filter, key, value)` matched with `cutie_codec::matches`.

    /// Longer than [`LEVEL_INLINE_MAX`], so stored boxed.
    const LONG: &str = "a-level-longer-than-22-bytes";
    const FILTER_LEVELS: [&str; 7] = ["a", "b", "c", "", "$s", LONG, "+"];
    const TOPIC_LEVELS: [&str; 6] = ["a", "b", "c", "", "$s", LONG];

    fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
        (
            prop::collection::vec(prop::sample::select(&FILTER_LEVELS[..]), 0..4),
            any::<bool>(),
        )
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

        /// Few filters, many keys: entry lists grow past the indexed size and shrink back.
        #[test]
        fn popular_filters_agree_with_a_naive_model(
            ops in prop::collection::vec((0..3usize, 0..40u8, any::<bool>()), 1..400),
        ) {
            let filters = [f("a/+"), f("a/#"), f("#")];
            let mut trie = Trie::new();
            let mut model = std::collections::BTreeMap::new();
            for (step, (filter, key, insert)) in ops.into_iter().enumerate() {
                if insert {
                    let expected = model.insert((filter, key), step);
                    prop_assert_eq!(trie.insert(&filters[filter], key, step), expected);
                } else {
                    let expected = model.remove(&(filter, key));
                    prop_assert_eq!(trie.remove(&filters[filter], key), expected);
                }
                trie.check_invariants();
                prop_assert_eq!(trie.len(), model.len());
            }
            for (&(filter, key), value) in &model {
                prop_assert_eq!(trie.get(&filters[filter], key), Some(value));
            }
            let mut expected: Vec<(u8, usize)> = model.iter().map(|(&(_, k), &v)| (k, v)).collect();
            expected.sort();
            prop_assert_eq!(matched(&trie, &t("a/b")), expected);
        }
    }
}
