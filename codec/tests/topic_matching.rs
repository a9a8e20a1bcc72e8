//! `cutie_codec::matches` against a naive recursive reference matcher, on every filter
//! and topic over a small alphabet (exhaustively) and on generated longer ones.

use cutie_codec::{matches, TopicFilter, TopicName};
use proptest::collection::vec;
use proptest::prelude::*;

/// Levels small enough that filters and topics actually meet: equal levels, empty levels
/// and a `$` level.
const LEVELS: [&str; 4] = ["a", "b", "$x", ""];

/// The reference: MQTT 3.1.1 section 4.7 read literally, one level at a time.
fn reference_levels(filter: &[&str], topic: &[&str]) -> bool {
    match (filter.split_first(), topic.split_first()) {
        // `#` matches the parent level and any number of child levels [MQTT-4.7.1-2].
        (Some((&"#", _)), _) => true,
        // `+` matches exactly one level [MQTT-4.7.1-3].
        (Some((&"+", filter_rest)), Some((_, topic_rest))) => {
            reference_levels(filter_rest, topic_rest)
        }
        (Some((filter_level, filter_rest)), Some((topic_level, topic_rest))) => {
            filter_level == topic_level && reference_levels(filter_rest, topic_rest)
        }
        (None, None) => true,
        _ => false,
    }
}

fn reference(filter: &str, topic: &str) -> bool {
    // A filter starting with a wildcard does not match a `$` topic [MQTT-4.7.2-1].
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    reference_levels(&filter, &topic)
}

/// Every sequence of 1..=`depth_max` items of `alphabet`, joined with `/`.
fn joined(alphabet: &[&str], depth_max: usize) -> Vec<String> {
    let mut all: Vec<Vec<String>> = alphabet.iter().map(|l| vec![l.to_string()]).collect();
    let mut frontier = all.clone();
    for _ in 1..depth_max {
        let mut next = Vec::new();
        for prefix in &frontier {
            for level in alphabet {
                let mut longer = prefix.clone();
                longer.push(level.to_string());
                next.push(longer);
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all.into_iter().map(|levels| levels.join("/")).collect()
}

fn all_topics() -> Vec<TopicName> {
    joined(&LEVELS, 3)
        .into_iter()
        .filter_map(|topic| TopicName::try_from(topic).ok())
        .collect()
}

fn all_filters() -> Vec<TopicFilter> {
    let mut alphabet = LEVELS.to_vec();
    alphabet.push("+");
    let plain = joined(&alphabet, 3);
    let mut filters = vec!["#".to_owned()];
    filters.extend(plain.iter().map(|filter| format!("{filter}/#")));
    filters.extend(plain);
    filters
        .into_iter()
        .filter_map(|filter| TopicFilter::try_from(filter).ok())
        .collect()
}

#[test]
fn matcher_agrees_with_the_reference_on_all_short_filters_and_topics() {
    let topics = all_topics();
    let filters = all_filters();
    let mut match_count = 0;
    for filter in &filters {
        for topic in &topics {
            let expected = reference(filter, topic);
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
            match_count += usize::from(expected);
        }
    }
    // The alphabet is small on purpose: a good share of pairs must match.
    let pairs = filters.len() * topics.len();
    assert!(
        match_count * 20 > pairs,
        "only {match_count} of {pairs} pairs match"
    );
}

#[test]
fn wildcard_first_filters_never_match_dollar_topics() {
    for topic in all_topics().iter().filter(|topic| topic.starts_with('$')) {
        for filter in all_filters() {
            if filter.starts_with(['+', '#']) {
                assert!(!matches(&filter, topic), "{filter:?} matched {topic:?}");
            }
        }
        // But a filter naming the `$` level does.
        let own = TopicFilter::try_from(format!("{}/#", topic.split('/').next().unwrap_or("")))
            .expect("valid filter");
        assert!(matches(&own, topic), "{own:?} vs {topic:?}");
    }
}

#[test]
fn hash_matches_the_parent_level() {
    let filter = TopicFilter::try_from("a/#").expect("valid filter");
    assert!(matches(
        &filter,
        &TopicName::try_from("a").expect("valid topic")
    ));
    assert!(matches(
        &filter,
        &TopicName::try_from("a/").expect("valid topic")
    ));
    assert!(!matches(
        &filter,
        &TopicName::try_from("b").expect("valid topic")
    ));
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(LEVELS.to_vec()).prop_map(String::from),
        1 => "[ab$ü]{1,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matcher_agrees_with_the_reference_on_generated_filters_and_topics(
        topic in vec(level(), 1..7),
        filter in vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..7),
        hash in any::<bool>(),
    ) {
        let Ok(topic) = TopicName::try_from(topic.join("/")) else {
            return Ok(());
        };
        let mut filter = filter.join("/");
        if hash {
            filter.push_str(if filter.is_empty() { "#" } else { "/#" });
        }
        let Ok(filter) = TopicFilter::try_from(filter) else {
            return Ok(());
        };
        prop_assert_eq!(matches(&filter, &topic), reference(&filter, &topic));
    }

    #[test]
    fn a_topic_used_as_a_filter_matches_itself(topic in vec(level(), 1..7)) {
        let Ok(name) = TopicName::try_from(topic.join("/")) else {
            return Ok(());
        };
        let filter = TopicFilter::try_from(topic.join("/")).expect("a topic name is a filter");
        prop_assert!(matches(&filter, &name));
    }
}
