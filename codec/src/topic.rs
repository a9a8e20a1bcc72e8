//! Topic names, topic filters and matching (MQTT 3.1.1 section 4.7).
//!
//! Both are validated once, at the edge, and then carried as newtypes so the rest of
//! the broker never re-checks them. They wrap a [`ByteString`], so a topic decoded from a
//! PUBLISH shares the packet's buffer instead of allocating.

use bytestring::ByteString;
use std::fmt;

/// Topic names and filters are UTF-8 strings of at most 65,535 bytes [MQTT-4.7.3-3].
pub const TOPIC_BYTES_MAX: usize = 65_535;

/// Why a string is not a valid topic name or topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long [MQTT-4.7.3-1].
    #[error("empty topic [MQTT-4.7.3-1]")]
    Empty,
    /// Topic names and filters are at most 65,535 bytes [MQTT-4.7.3-3].
    #[error("topic longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// Topic names and filters must not contain U+0000 [MQTT-4.7.3-2].
    #[error("topic contains U+0000 [MQTT-4.7.3-2]")]
    NullCharacter,
    /// The topic name of a PUBLISH must not contain wildcards [MQTT-3.3.2-2].
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// `#` must be the last character of a filter and occupy a whole level [MQTT-4.7.1-2].
    #[error("'#' is not alone in the last level [MQTT-4.7.1-2]")]
    MultiLevelWildcardNotLast,
    /// `+` must occupy an entire level of the filter [MQTT-4.7.1-3].
    #[error("'+' does not occupy a whole level [MQTT-4.7.1-3]")]
    SingleLevelWildcardNotWholeLevel,
}

impl TopicError {
    /// The normative statement of the MQTT 3.1.1 standard this error violates.
    pub fn spec_statement(self) -> &'static str {
        match self {
            TopicError::Empty => "MQTT-4.7.3-1",
            TopicError::TooLong => "MQTT-4.7.3-3",
            TopicError::NullCharacter => "MQTT-4.7.3-2",
            TopicError::WildcardInTopicName => "MQTT-3.3.2-2",
            TopicError::MultiLevelWildcardNotLast => "MQTT-4.7.1-2",
            TopicError::SingleLevelWildcardNotWholeLevel => "MQTT-4.7.1-3",
        }
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// A valid topic name: what a PUBLISH is sent to. No wildcards, not empty.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(ByteString);

impl TopicName {
    /// Validates `s` as a topic name.
    pub fn new(s: impl Into<ByteString>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        if s.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInTopicName);
        }
        Ok(TopicName(s))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying shared string (cheap to clone).
    pub fn as_byte_string(&self) -> &ByteString {
        &self.0
    }

    /// The topic levels, split on `/`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether this is a `$`-topic (such as `$SYS/...`), which filters starting with a
    /// wildcard do not match [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// A valid topic filter: what a SUBSCRIBE or UNSUBSCRIBE names. May hold `+` and `#`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(ByteString);

impl TopicFilter {
    /// Validates `s` as a topic filter.
    pub fn new(s: impl Into<ByteString>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::MultiLevelWildcardNotLast);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::SingleLevelWildcardNotWholeLevel);
            }
        }
        Ok(TopicFilter(s))
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying shared string (cheap to clone).
    pub fn as_byte_string(&self) -> &ByteString {
        &self.0
    }

    /// The filter levels, split on `/`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the filter holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Whether this filter matches `topic`. See [`matches()`].
    pub fn matches(&self, topic: &TopicName) -> bool {
        matches(self, topic)
    }
}

/// Whether `filter` matches `topic` (MQTT 3.1.1 section 4.7).
///
/// `+` matches exactly one level, `#` matches the parent level and any number of child
/// levels, and a filter starting with a wildcard does not match a topic starting with
/// `$` [MQTT-4.7.2-1].
pub fn matches(filter: &TopicFilter, topic: &TopicName) -> bool {
    if topic.is_dollar() && filter.0.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.levels();
    for filter_level in filter.levels() {
        if filter_level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if filter_level == "+" || filter_level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

macro_rules! string_impls {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<&str> for $t {
            type Error = TopicError;
            fn try_from(s: &str) -> Result<Self, TopicError> {
                Self::new(ByteString::from(s))
            }
        }
        impl TryFrom<String> for $t {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, TopicError> {
                Self::new(ByteString::from(s))
            }
        }
    };
}
string_impls!(TopicName);
string_impls!(TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).expect("valid filter in test table")
    }
    fn t(s: &str) -> TopicName {
        TopicName::try_from(s).expect("valid topic in test table")
    }

    #[test]
    fn matching_table() {
        let table = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/b/c", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("+", "", false),
            ("a/b", "a/b/", false),
            ("a/b/", "a/b/", true),
            ("a/+/", "a/b/", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a/+/+", "a/b", false),
            ("sport/tennis/#", "sport/tennis", true),
        ];
        for (filter, topic, expected) in table {
            if topic.is_empty() {
                assert!(TopicName::try_from(topic).is_err());
                continue;
            }
            assert_eq!(
                matches(&f(filter), &t(topic)),
                expected,
                "{filter} vs {topic}"
            );
        }
    }

    #[test]
    fn filter_validation_table() {
        use TopicError::*;
        let table: [(&str, Result<(), TopicError>); 10] = [
            ("a/#", Ok(())),
            ("#", Ok(())),
            ("+/a/+", Ok(())),
            ("", Err(Empty)),
            ("a/#/b", Err(MultiLevelWildcardNotLast)),
            ("a#", Err(MultiLevelWildcardNotLast)),
            ("a/b#", Err(MultiLevelWildcardNotLast)),
            ("a+/b", Err(SingleLevelWildcardNotWholeLevel)),
            ("a/+b", Err(SingleLevelWildcardNotWholeLevel)),
            ("a\0b", Err(NullCharacter)),
        ];
        for (filter, expected) in table {
            assert_eq!(
                TopicFilter::try_from(filter).map(|_| ()),
                expected,
                "{filter:?}"
            );
        }
    }

    #[test]
    fn topic_name_rejects_wildcards_and_empty() {
        assert_eq!(
            TopicName::try_from("a/+").err(),
            Some(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            TopicName::try_from("#").err(),
            Some(TopicError::WildcardInTopicName)
        );
        assert_eq!(TopicName::try_from("").err(), Some(TopicError::Empty));
        assert!(TopicName::try_from("/").is_ok());
    }
}
