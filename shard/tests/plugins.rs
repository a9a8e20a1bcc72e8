//! The message-plugin hooks in the shard core: a plugin that rewrites topics, drops
//! messages, publishes derived messages, rejects and rewrites subscriptions, and sees
//! connects and disconnects.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{connect, output, send, subscribe_packet};
use cutie_codec::{
    Packet, PacketId, Publish, PublishQos, QoS, SubscribeReturnCode, TopicFilter, TopicName,
};
use cutie_shard::access::Identity;
use cutie_shard::plugin::{MessagePlugin, PluginMessage, PublishVerdict, SubscribeVerdict};
use cutie_shard::{Limits, ShardCore, ShardId};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Seen {
    connects: Vec<String>,
    disconnects: Vec<String>,
}

#[derive(Debug)]
struct Rules(Arc<Mutex<Seen>>);

impl MessagePlugin for Rules {
    fn name(&self) -> &str {
        "rules"
    }

    fn on_connect(&mut self, client: &Identity<'_>) {
        self.0
            .lock()
            .unwrap()
            .connects
            .push(client.client_id.to_owned());
    }

    fn on_disconnect(&mut self, client_id: &str) {
        self.0
            .lock()
            .unwrap()
            .disconnects
            .push(client_id.to_owned());
    }

    fn on_subscribe(&mut self, _client: &Identity<'_>, filter: &TopicFilter) -> SubscribeVerdict {
        match filter.as_str() {
            "secret/#" => SubscribeVerdict::Reject,
            "old/#" => SubscribeVerdict::Rewrite(TopicFilter::new("new/#").unwrap()),
            _ => SubscribeVerdict::Accept,
        }
    }

    fn on_publish(
        &mut self,
        _client: &Identity<'_>,
        message: &mut PluginMessage,
        derived: &mut Vec<PluginMessage>,
    ) -> PublishVerdict {
        match message.topic.as_str() {
            "drop/me" => PublishVerdict::Drop,
            "old/x" => {
                message.topic = TopicName::new("new/x").unwrap();
                message.payload = Bytes::from_static(b"rewritten");
                derived.push(PluginMessage {
                    topic: TopicName::new("new/audit").unwrap(),
                    payload: Bytes::from_static(b"saw old/x"),
                    qos: QoS::AtMostOnce,
                    retain: false,
                });
                PublishVerdict::Pass
            }
            _ => PublishVerdict::Pass,
        }
    }
}

fn publish(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: PublishQos::AtLeastOnce(PacketId::new(9).unwrap()),
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
    })
}

#[test]
fn plugins_rewrite_drop_derive_and_filter_subscriptions() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut core = ShardCore::new(ShardId(0), 1, Limits::default());
    core.add_plugin(Box::new(Rules(seen.clone())), true);
    connect(&mut core, 1, "sub", true);
    output(&mut core, 1);
    send(
        &mut core,
        1,
        subscribe_packet(&[
            ("secret/#", QoS::AtMostOnce),
            ("old/#", QoS::AtMostOnce),
            ("drop/#", QoS::AtMostOnce),
        ]),
    );
    let Packet::SubAck(suback) = &output(&mut core, 1)[0] else {
        panic!("expected SUBACK");
    };
    assert_eq!(
        suback.return_codes,
        vec![
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Success(QoS::AtMostOnce),
            SubscribeReturnCode::Success(QoS::AtMostOnce)
        ]
    );
    assert!(core
        .session("sub")
        .unwrap()
        .subscriptions
        .contains_key(&TopicFilter::new("new/#").unwrap()));

    connect(&mut core, 2, "pub", true);
    output(&mut core, 2);
    send(&mut core, 2, publish("drop/me", b"x"));
    assert_eq!(
        output(&mut core, 2),
        vec![Packet::PubAck(PacketId::new(9).unwrap())],
        "a dropped QoS 1 publish is still acknowledged"
    );
    assert!(
        output(&mut core, 1).is_empty(),
        "the dropped message was delivered"
    );
    send(&mut core, 2, publish("old/x", b"original"));
    let delivered: Vec<(String, Bytes)> = output(&mut core, 1)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.payload),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        delivered,
        vec![
            ("new/x".to_owned(), Bytes::from_static(b"rewritten")),
            ("new/audit".to_owned(), Bytes::from_static(b"saw old/x")),
        ]
    );
    assert_eq!(core.stats.plugin_dropped_total, 1);
    assert_eq!(core.stats.plugin_derived_total, 1);

    send(&mut core, 2, Packet::Disconnect);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.connects, vec!["sub", "pub"]);
    assert_eq!(seen.disconnects, vec!["pub"]);
}
