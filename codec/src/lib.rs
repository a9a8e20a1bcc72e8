//! `cutie-codec`: MQTT control packets to and from bytes.
//!
//! Pure code: no I/O, no runtime, no global state. The broker, the bench harness and the
//! tests all speak MQTT through this crate.
//!
//! - [`packet`]: the control packets of MQTT 3.1 (`MQIsdp`, level 3) and 3.1.1 (`MQTT`,
//!   level 4) as plain types. The types carry the protocol level so MQTT 5.0 (level 5)
//!   can add properties and reason codes without reshaping them.
//! - [`decode`]: a streaming decoder over a `BytesMut`. `Ok(None)` means "need more
//!   bytes"; the Remaining Length is checked against the configured maximum packet size
//!   as soon as the fixed header is read; PUBLISH payloads are `Bytes` slices of the
//!   input, never copies.
//! - [`encode`]: packets to bytes, with exact length computation.
//! - [`error`]: one typed error per protocol violation, each naming its spec statement.
//! - [`topic`]: validated [`TopicName`] and [`TopicFilter`] newtypes and the one
//!   [`matches()`] function the broker routes with.

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
pub mod topic;

pub use decode::Decoder;
pub use error::DecodeError;
pub use packet::*;
pub use topic::{matches, TopicError, TopicFilter, TopicName};
