//! Mosquitto's `acl_file`: which topics each client may publish to and subscribe to.
//!
//! The format (mosquitto.conf(5), `acl_file`):
//!
//! ```text
//! # Lines before any `user` line apply to anonymous clients (no user name).
//! topic read $SYS/#
//!
//! user alice
//! topic readwrite sensors/#      # access: read, write, readwrite (the default) or deny
//! topic deny sensors/secret
//!
//! # Patterns apply to every client: %u is the user name, %c the client id.
//! pattern write devices/%c/status
//! pattern readwrite users/%u/#
//! ```
//!
//! - `topic [read|write|readwrite|deny] <filter>` adds a rule to the current section:
//!   anonymous clients before the first `user <name>` line, that user after it (a user
//!   may have several sections; they add up). The filter may contain `+` and `#` and
//!   runs to the end of the line, so it may contain blanks; a line with one word after
//!   `topic` is that filter with `readwrite` access (`topic read` is the topic "read").
//! - `pattern [..] <filter>` adds a rule for every client, anonymous ones included, with
//!   `%u` replaced by the user name and `%c` by the client id. A pattern that uses `%u`
//!   does not apply to anonymous clients.
//! - A line whose first non-blank character is `#` is a comment; blank lines are
//!   skipped. Anything else (an unknown keyword, a bad access word, an invalid filter)
//!   makes the whole file an error naming the line: Mosquitto refuses to start too.
//!
//! A client's rules are its own section (a user with no section has none) plus the
//! patterns. With an ACL, what no rule grants is refused. `deny` rules win over every
//! grant, whatever their order or section ("deny topics are handled before topics that
//! grant read/write access", mosquitto.conf(5)). Mosquitto 2.0 itself checks a user's
//! own rules before the patterns, so a user's grant beats a pattern's deny there; here
//! the deny wins.
//!
//! Checks:
//!
//! - PUBLISH to a topic: some writable rule's filter matches it, and no deny rule's.
//! - SUBSCRIBE to a filter: granted when some readable rule's filter *overlaps* it (some
//!   topic matches both) and no deny rule's filter *covers* it (every topic the requested
//!   filter matches, the deny rule's matches too: `a/#` covers `a/+/b`, `a/+` does not
//!   cover `a/#`). So `#` is granted beside `topic deny a/b`, as in Mosquitto, and refused
//!   (SUBACK 0x80) only when it lies wholly inside denied space or reaches no readable
//!   topic at all.
//! - Every message sent to a client: some readable rule's filter matches its topic, and
//!   no deny rule's ([`ClientAcl::check_receive`], asked by the shard per message). That
//!   is what keeps `a/b` from a `#` subscriber above.
//! - As in Mosquitto, if the ACL has patterns, a client whose user name or client id
//!   contains `+` or `#` is refused everything: substituted into a pattern, those would
//!   be wildcards. Topics starting with `$` match only filters whose first level is not
//!   a wildcard ([MQTT-4.7.2-1]).
//!
//! Cost: [`Acl::for_client`] runs once per CONNECT and allocates the client's expanded
//! patterns; [`ClientAcl`]'s checks allocate nothing and walk every rule of the client
//! (its own section plus the patterns) once per PUBLISH or SUBSCRIBE filter.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{AuthError, LineError, STRING_BYTES_MAX};

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, whatever other rules grant.
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// One `topic` rule, or one pattern after substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: Box<str>,
}

/// One `pattern` rule before substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    access: Access,
    template: Box<str>,
    /// Whether the template contains `%u`: such a pattern skips anonymous clients.
    uses_user: bool,
}

/// A parsed ACL file. Shared read-only by every connection (the per-user rule lists are
/// reference-counted, so [`ClientAcl`]s do not copy them).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Rules before the first `user` line.
    anonymous: Arc<[Rule]>,
    /// User name -> that user's rules, all of its sections together.
    users: HashMap<String, Arc<[Rule]>>,
    patterns: Vec<Pattern>,
}

/// One client's rules, resolved at CONNECT: its section plus its expanded patterns.
#[derive(Debug, Clone)]
pub struct ClientAcl {
    own: Arc<[Rule]>,
    patterns: Vec<Rule>,
    /// The user name or client id would have put a wildcard into a pattern.
    refuse_all: bool,
}

impl Acl {
    /// Reads and parses the ACL file at `path`; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = super::read_text("ACL file", path)?;
        Self::parse(&text).map_err(|e| AuthError::Parse {
            path: path.to_owned(),
            line: e.line,
            reason: e.reason,
        })
    }

    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Self, LineError> {
        let mut anonymous = Vec::new();
        let mut users: HashMap<String, Vec<Rule>> = HashMap::new();
        let mut patterns = Vec::new();
        let mut section: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let error = |reason: String| LineError {
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("'user' needs a user name".to_owned()));
                    }
                    if rest.len() > STRING_BYTES_MAX {
                        return Err(error(format!(
                            "user name longer than {STRING_BYTES_MAX} bytes"
                        )));
                    }
                    section = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let (access, filter) = parse_rule(keyword, rest).map_err(error)?;
                    if keyword == "pattern" {
                        patterns.push(Pattern {
                            access,
                            template: filter.into(),
                            uses_user: filter.contains("%u"),
                        });
                    } else {
                        let rule = Rule {
                            access,
                            filter: filter.into(),
                        };
                        match &section {
                            None => anonymous.push(rule),
                            Some(user) => users.entry(user.clone()).or_default().push(rule),
                        }
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword '{other}' (expected 'topic', 'pattern' or 'user')"
                    )))
                }
            }
        }
        Ok(Acl {
            anonymous: anonymous.into(),
            users: users
                .into_iter()
                .map(|(user, rules)| (user, rules.into()))
                .collect(),
            patterns,
        })
    }

    /// The rules of one client, to keep with its connection: `user` is the CONNECT user
    /// name (`None` for an anonymous client), `client_id` its client id (the assigned
    /// one if the client sent none).
    pub fn for_client(&self, user: Option<&str>, client_id: &str) -> ClientAcl {
        let own = match user {
            None => Arc::clone(&self.anonymous),
            Some(user) => self
                .users
                .get(user)
                .map(Arc::clone)
                .unwrap_or_else(|| Arc::from(Vec::new())),
        };
        let is_wild = |s: &str| s.contains(['+', '#']);
        let refuse_all =
            !self.patterns.is_empty() && (user.is_some_and(is_wild) || is_wild(client_id));
        let patterns = if refuse_all {
            Vec::new()
        } else {
            self.patterns
                .iter()
                .filter(|pattern| user.is_some() || !pattern.uses_user)
                .map(|pattern| Rule {
                    access: pattern.access,
                    filter: substitute(&pattern.template, user.unwrap_or(""), client_id).into(),
                })
                .collect()
        };
        ClientAcl {
            own,
            patterns,
            refuse_all,
        }
    }

    /// Whether the client may publish to `topic`. Resolves the client's rules on every
    /// call: the connection path should keep a [`ClientAcl`] instead.
    pub fn check_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.for_client(user, client_id).check_publish(topic)
    }

    /// Whether the client may subscribe to `filter` (see the module documentation).
    pub fn check_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.for_client(user, client_id).check_subscribe(filter)
    }

    /// Whether the client may receive a message published to `topic`.
    pub fn check_receive(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.for_client(user, client_id).check_receive(topic)
    }
}

impl ClientAcl {
    /// Whether this client may publish to the topic name `topic`.
    pub fn check_publish(&self, topic: &str) -> bool {
        self.check_topic(topic, Access::writes)
    }

    /// Whether this client may receive a message published to `topic`.
    pub fn check_receive(&self, topic: &str) -> bool {
        self.check_topic(topic, Access::reads)
    }

    /// Whether this client may subscribe to `filter`: a readable rule overlaps it and no
    /// deny rule covers it. What it then matches is checked per message
    /// ([`ClientAcl::check_receive`]).
    pub fn check_subscribe(&self, filter: &str) -> bool {
        if self.refuse_all || check_filter(filter).is_err() {
            return false;
        }
        let mut rules = self.rules();
        if rules
            .clone()
            .any(|rule| rule.access == Access::Deny && covers(&rule.filter, filter))
        {
            return false;
        }
        rules.any(|rule| rule.access.reads() && overlaps(&rule.filter, filter))
    }

    fn check_topic(&self, topic: &str, allows: fn(Access) -> bool) -> bool {
        if self.refuse_all || topic.is_empty() || topic.contains(['+', '#']) {
            return false;
        }
        let mut rules = self.rules();
        if rules
            .clone()
            .any(|rule| rule.access == Access::Deny && matches(&rule.filter, topic))
        {
            return false;
        }
        rules.any(|rule| allows(rule.access) && matches(&rule.filter, topic))
    }

    fn rules(&self) -> impl Iterator<Item = &Rule> + Clone {
        self.own.iter().chain(self.patterns.iter())
    }
}

/// Splits off the first blank-separated word; the rest is trimmed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// Parses what follows `topic` or `pattern`: `[access] <filter>`.
fn parse_rule<'a>(keyword: &str, rest: &'a str) -> Result<(Access, &'a str), String> {
    if rest.is_empty() {
        return Err(format!("'{keyword}' needs a topic filter"));
    }
    let (first, filter) = split_word(rest);
    let (access, filter) = if filter.is_empty() {
        // One word: Mosquitto reads it as the filter, with readwrite access.
        (Access::ReadWrite, first)
    } else {
        let access = Access::parse(first).ok_or_else(|| {
            format!("invalid access '{first}' (expected read, write, readwrite or deny)")
        })?;
        (access, filter)
    };
    check_filter(filter).map_err(|reason| format!("invalid topic filter '{filter}': {reason}"))?;
    Ok((access, filter))
}

/// Checks that `filter` is a valid MQTT topic filter: not empty, `+` and `#` only as
/// whole levels, `#` only last ([MQTT-4.7.1-2], [MQTT-4.7.1-3]), no NUL
/// ([MQTT-1.5.3-2]).
fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty");
    }
    if filter.len() > STRING_BYTES_MAX {
        return Err("longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return Err("contains NUL");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Replaces `%u` with `user` and `%c` with `client_id`; any other `%` stays.
fn substitute(template: &str, user: &str, client_id: &str) -> String {
    let mut out = String::with_capacity(template.len() + user.len() + client_id.len());
    let mut rest = template;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('u') {
            out.push_str(user);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('c') {
            out.push_str(client_id);
            rest = tail;
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Whether a level of a filter is a wildcard.
fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

/// [MQTT-4.7.2-1]: a filter starting with a wildcard does not match topics starting with
/// `$`. `first` and `other_first` are the first levels of the filter and of the topic (or
/// other filter) it is compared with.
fn dollar_excluded(first: &str, other_first: &str) -> bool {
    is_wildcard(first) && other_first.starts_with('$')
}

/// Whether the topic filter `filter` matches the topic name `topic`.
fn matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    let mut first = true;
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some(f), Some(t)) if first && dollar_excluded(f, t) => return false,
            // `a/#` matches `a` too (MQTT 3.1.1 section 4.7.1.2).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether every topic that `inner` matches, `outer` matches too.
fn covers(outer: &str, inner: &str) -> bool {
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    let mut first = true;
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some(o), Some(i)) if first && dollar_excluded(o, i) => return false,
            (Some("#"), _) => return true,
            // On the first level `+/#` is `#`: there is no topic of zero levels for `#`
            // to match that `+/#` does not.
            (Some("+"), Some("#")) if first => return outer_levels.next() == Some("#"),
            (Some("+"), Some(i)) if i != "#" => {}
            (Some(o), Some(i)) if o == i && !is_wildcard(o) => {}
            // `inner` ended where `outer` goes on (and is not `#`): `inner` matches a
            // shorter topic than any `outer` matches. Or the other way round, or a level
            // differs, or `inner` has a wildcard where `outer` has a narrower level.
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether some topic matches both filters.
fn overlaps(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    let mut first = true;
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some(x), Some(y)) if first && (dollar_excluded(x, y) || dollar_excluded(y, x)) => {
                return false
            }
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text).unwrap()
    }

    fn parse_err(text: &str) -> String {
        Acl::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn matching_follows_the_wildcard_rules() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a/", true),
            ("+/+", "/a", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/$x", "a/b/$x", true),
            ("a/b", "a/b/c", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn covering_follows_the_wildcard_rules() {
        let cases = [
            ("a/#", "a/+/b", true),
            ("a/#", "a/#", true),
            ("a/#", "a", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/b", "a/+", false),
            ("a/+/c", "a/+/c", true),
            ("a/+/c", "a/b/+", false),
            ("#", "#", true),
            ("#", "+/b", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/+", true),
            ("$SYS/#", "#", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (outer, inner, want) in cases {
            assert_eq!(covers(outer, inner), want, "{outer} covers {inner}");
        }
    }

    #[test]
    fn overlapping_follows_the_wildcard_rules() {
        let cases = [
            ("a/secret", "a/#", true),
            ("a/secret", "a/+", true),
            ("a/secret", "+/+", true),
            ("a/secret", "b/#", false),
            ("a/secret", "a/+/c", false),
            ("a/#", "a", true),
            ("a/+", "a", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "+/x", false),
            ("$SYS/#", "$SYS/+", true),
            ("+/b", "a/+", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(a, b), want, "{a} overlaps {b}");
            assert_eq!(overlaps(b, a), want, "{b} overlaps {a}");
        }
    }

    /// All filters of up to 3 levels over {a, b, $s, +, #}, and all topics of up to 4
    /// levels over {a, b, $s}: `covers` and `overlaps` agree with their definitions in
    /// terms of `matches` (one level deeper than any filter is enough to tell).
    #[test]
    fn covers_and_overlaps_agree_with_matching_exhaustively() {
        fn words(alphabet: &[&str], levels_max: usize) -> Vec<String> {
            let mut all: Vec<String> = Vec::new();
            let mut layer: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
            for _ in 0..levels_max {
                all.extend(layer.iter().cloned());
                layer = layer
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |l| format!("{w}/{l}")))
                    .collect();
            }
            all
        }
        let topics = words(&["a", "b", "$s"], 4);
        let filters: Vec<String> = words(&["a", "b", "$s", "+", "#"], 3)
            .into_iter()
            .filter(|f| check_filter(f).is_ok())
            .collect();
        assert_eq!(topics.len(), 120);
        let matched: Vec<Vec<bool>> = filters
            .iter()
            .map(|f| topics.iter().map(|t| matches(f, t)).collect())
            .collect();
        for (i, outer) in filters.iter().enumerate() {
            for (j, inner) in filters.iter().enumerate() {
                let by_topics = (0..topics.len()).all(|t| !matched[j][t] || matched[i][t]);
                assert_eq!(covers(outer, inner), by_topics, "{outer} covers {inner}");
                let by_topics = (0..topics.len()).any(|t| matched[j][t] && matched[i][t]);
                assert_eq!(
                    overlaps(outer, inner),
                    by_topics,
                    "{outer} overlaps {inner}"
                );
            }
        }
    }

    #[test]
    fn anonymous_rules_come_before_the_first_user_line() {
        let acl = acl("topic read public/#\nuser alice\ntopic alice/#\n");
        assert!(acl.check_subscribe(None, "c1", "public/+"));
        assert!(!acl.check_publish(None, "c1", "public/x"), "read only");
        assert!(!acl.check_subscribe(None, "c1", "alice/#"));
        assert!(acl.check_publish(Some("alice"), "c2", "alice/x"));
        assert!(acl.check_subscribe(Some("alice"), "c2", "alice/#"));
        assert!(
            !acl.check_subscribe(Some("alice"), "c2", "public/x"),
            "anonymous rules are not alice's"
        );
    }

    #[test]
    fn a_user_without_a_section_gets_only_the_patterns() {
        let acl = acl("topic #\nuser alice\ntopic a\npattern write out/%u\n");
        assert!(!acl.check_publish(Some("bob"), "c", "a"));
        assert!(acl.check_publish(Some("bob"), "c", "out/bob"));
        assert!(!acl.check_publish(Some("bob"), "c", "out/alice"));
    }

    #[test]
    fn access_words_grant_what_they_say() {
        let acl = acl("user u\ntopic read r\ntopic write w\ntopic readwrite rw\ntopic plain\n");
        let client = acl.for_client(Some("u"), "c");
        let table = [
            ("r", true, false),
            ("w", false, true),
            ("rw", true, true),
            ("plain", true, true),
            ("other", false, false),
        ];
        for (topic, read, write) in table {
            assert_eq!(client.check_subscribe(topic), read, "subscribe {topic}");
            assert_eq!(client.check_receive(topic), read, "receive {topic}");
            assert_eq!(client.check_publish(topic), write, "publish {topic}");
        }
    }

    #[test]
    fn one_word_after_topic_is_the_filter_even_if_it_is_an_access_word() {
        let acl = acl("topic read\n");
        assert!(acl.check_publish(None, "c", "read"));
        assert!(acl.check_subscribe(None, "c", "read"));
    }

    #[test]
    fn filters_may_contain_blanks() {
        let acl = acl("topic write with space/x\n");
        assert!(acl.check_publish(None, "c", "with space/x"));
    }

    #[test]
    fn subscription_needs_a_readable_rule_that_overlaps_it() {
        let acl = acl("user u\ntopic read a/#\ntopic read b/+\ntopic write c/#\n");
        let client = acl.for_client(Some("u"), "c");
        assert!(client.check_subscribe("a/+/b"));
        assert!(client.check_subscribe("a/#"));
        assert!(client.check_subscribe("a"));
        assert!(client.check_subscribe("b/x"));
        assert!(client.check_subscribe("b/+"));
        assert!(
            client.check_subscribe("b/#"),
            "reaches b/x; b/x/y is withheld"
        );
        assert!(!client.check_receive("b/x/y"));
        assert!(!client.check_subscribe("c/x"), "write only");
        assert!(!client.check_subscribe("b/x/y"), "no readable topic");
        assert!(client.check_subscribe("#"), "a monitoring client");
        assert!(client.check_subscribe("+/+"));
    }

    #[test]
    fn deny_wins_over_grants_in_any_order_and_section() {
        let acl = acl("user u\n\
             topic readwrite a/#\n\
             topic deny a/secret\n\
             topic readwrite a/secret\n\
             pattern deny a/%c/private\n");
        let client = acl.for_client(Some("u"), "dev1");
        assert!(client.check_publish("a/open"));
        assert!(!client.check_publish("a/secret"));
        assert!(!client.check_receive("a/secret"));
        assert!(!client.check_subscribe("a/secret"));
        assert!(
            !client.check_publish("a/dev1/private"),
            "pattern deny beats user grant"
        );
        assert!(client.check_publish("a/dev2/private"));
        // A subscription that overlaps a denied topic is granted; the denied messages
        // are withheld at delivery. One wholly inside denied space is refused.
        assert!(client.check_subscribe("a/#"));
        assert!(client.check_subscribe("a/+"));
        assert!(client.check_subscribe("#"));
        assert!(client.check_subscribe("a/open/#"));
        assert!(client.check_subscribe("a/+/x"));
        assert!(!client.check_subscribe("a/dev1/private"));
        let acl = self::acl("topic #\ntopic deny a/#\n");
        assert!(!acl.check_subscribe(None, "c", "a/+/b"));
        assert!(!acl.check_subscribe(None, "c", "a/#"));
        assert!(acl.check_subscribe(None, "c", "+/b"));
    }

    #[test]
    fn deny_is_honoured_when_listed_first() {
        let acl = acl("topic deny x/#\ntopic x/#\n");
        assert!(!acl.check_publish(None, "c", "x/y"));
    }

    #[test]
    fn patterns_substitute_user_name_and_client_id() {
        let acl = acl("pattern readwrite users/%u/#\n\
             pattern write devices/%c/status\n\
             pattern read both/%u/%c\n\
             pattern read literal/%x\n");
        let client = acl.for_client(Some("alice"), "dev-1");
        assert!(client.check_publish("users/alice/x"));
        assert!(client.check_subscribe("users/alice/#"));
        assert!(!client.check_publish("users/bob/x"));
        assert!(client.check_publish("devices/dev-1/status"));
        assert!(!client.check_publish("devices/dev-2/status"));
        assert!(client.check_subscribe("both/alice/dev-1"));
        assert!(client.check_subscribe("literal/%x"));
    }

    #[test]
    fn user_patterns_skip_anonymous_clients_but_client_patterns_apply() {
        let acl = acl("pattern users/%u/#\npattern devices/%c\n");
        let anonymous = acl.for_client(None, "dev-1");
        assert!(!anonymous.check_publish("users//x"));
        assert!(!anonymous.check_publish("users/x"));
        assert!(anonymous.check_publish("devices/dev-1"));
    }

    #[test]
    fn wildcards_in_names_refuse_everything_when_patterns_exist() {
        let acl = acl("topic #\nuser a+\ntopic #\npattern devices/%c\n");
        assert!(!acl.check_publish(None, "dev/#", "devices/x"));
        assert!(!acl.check_publish(None, "dev#", "anything"));
        assert!(!acl.check_publish(Some("a+"), "c", "anything"));
        assert!(acl.check_publish(None, "ok", "anything"));
        // Without patterns the names are harmless.
        let acl = self::acl("topic #\n");
        assert!(acl.check_publish(None, "dev#", "anything"));
    }

    #[test]
    fn dollar_topics_need_an_explicit_rule() {
        let acl = acl("topic #\ntopic read $SYS/#\n");
        assert!(!acl.check_publish(None, "c", "$SYS/x"));
        assert!(acl.check_receive(None, "c", "$SYS/x"));
        assert!(acl.check_subscribe(None, "c", "$SYS/#"));
        assert!(acl.check_subscribe(None, "c", "#"));
    }

    #[test]
    fn invalid_topics_and_filters_are_refused() {
        let acl = acl("topic #\n");
        assert!(!acl.check_publish(None, "c", ""));
        assert!(!acl.check_publish(None, "c", "a/+"));
        assert!(!acl.check_publish(None, "c", "a/#"));
        assert!(!acl.check_subscribe(None, "c", "a/#/b"));
        assert!(!acl.check_subscribe(None, "c", "a+"));
        assert!(!acl.check_subscribe(None, "c", ""));
    }

    #[test]
    fn empty_acl_refuses_everything() {
        let acl = acl("# nothing\n\n");
        assert!(!acl.check_publish(None, "c", "a"));
        assert!(!acl.check_subscribe(Some("u"), "c", "a"));
    }

    #[test]
    fn comments_blanks_and_sections_adding_up() {
        let acl = acl(
            "# header\n\n  # indented\nuser u\ntopic read a\n\nuser v\ntopic b\nuser u\n\ttopic\twrite\tc\n",
        );
        let client = acl.for_client(Some("u"), "x");
        assert!(client.check_subscribe("a"));
        assert!(client.check_publish("c"));
        assert!(!client.check_publish("b"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let cases = [
            (
                "topic a\nfoo bar\n",
                "line 2: unknown keyword 'foo' (expected 'topic', 'pattern' or 'user')",
            ),
            ("user\n", "line 1: 'user' needs a user name"),
            ("\n\ntopic\n", "line 3: 'topic' needs a topic filter"),
            ("pattern\n", "line 1: 'pattern' needs a topic filter"),
            (
                "topic reed a/b\n",
                "line 1: invalid access 'reed' (expected read, write, readwrite or deny)",
            ),
            (
                "topic read a/#/b\n",
                "line 1: invalid topic filter 'a/#/b': '#' must be a whole level and the last one",
            ),
            (
                "topic a+\n",
                "line 1: invalid topic filter 'a+': '+' must be a whole level",
            ),
            (
                "Topic a\n",
                "line 1: unknown keyword 'Topic' (expected 'topic', 'pattern' or 'user')",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_err(text), want, "{text:?}");
        }
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "user alice\ntopic deny a/#/b\n").unwrap();
        let message = Acl::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "{}:2: invalid topic filter 'a/#/b'",
                path.display()
            )),
            "{message}"
        );
        std::fs::write(&path, "user alice\ntopic read a/#\n").unwrap();
        assert!(Acl::load(&path)
            .unwrap()
            .check_subscribe(Some("alice"), "c", "a/b"));
    }

    #[test]
    fn a_refused_subscription_could_have_delivered_nothing() {
        // Soundness of the SUBACK 0x80: every refused filter matches no topic the client
        // may receive, so refusing it withholds nothing the per-message check would send.
        let acl = acl(
            "topic read a/#\ntopic deny a/b/c\ntopic read +/x\ntopic deny $s/#\ntopic read $s/a\n\
             topic deny b/#\n",
        );
        let client = acl.for_client(None, "c");
        let levels = ["a", "b", "x", "c", "$s"];
        let mut filters = vec![];
        for x in levels.iter().chain(&["+", "#"]) {
            for y in levels.iter().chain(&["+", "#"]) {
                filters.push(format!("{x}/{y}"));
                filters.push(format!("{x}/{y}/c"));
            }
        }
        let mut refused = 0;
        for filter in filters.iter().filter(|f| check_filter(f).is_ok()) {
            if client.check_subscribe(filter) {
                continue;
            }
            refused += 1;
            for x in levels {
                for y in levels {
                    for topic in [format!("{x}/{y}"), format!("{x}/{y}/c")] {
                        if matches(filter, &topic) {
                            assert!(!client.check_receive(&topic), "{filter} refused, {topic}");
                        }
                    }
                }
            }
        }
        assert!(refused > 5, "the ACL refuses some filters: {refused}");
    }
}
