//! The check the `decode` fuzz target runs on every input, shared with
//! `codec/tests/fuzz_corpus.rs` (included there with `#[path]`) so the corpus is replayed
//! by plain `cargo test`.

use bytes::BytesMut;
use cutie_codec::{Decoder, Packet};

/// Small, so size-limit paths are reached by short inputs.
pub const PACKET_SIZE_MAX: usize = 1024;

/// Decodes `data` until it runs out or is refused. Must not panic; every packet that
/// decodes must encode to exactly `encoded_len` bytes that decode back to the same packet.
/// Returns the packets decoded.
pub fn check(data: &[u8]) -> Vec<Packet> {
    let mut decoder = Decoder::new(PACKET_SIZE_MAX);
    let mut buf = BytesMut::from(data);
    let mut decoded = Vec::new();
    loop {
        let len_before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < len_before, "a decoded packet consumed no bytes");
                let mut encoded = BytesMut::new();
                packet.encode(&mut encoded);
                assert_eq!(encoded.len(), packet.encoded_len(), "{packet:?}");
                // Re-encoding is minimal, so it is never larger than what was decoded.
                let again = decoder.decode(&mut encoded);
                assert_eq!(
                    again,
                    Ok(Some(packet.clone())),
                    "re-decoding {encoded:02x?}"
                );
                assert!(encoded.is_empty(), "re-decoding left bytes");
                decoded.push(packet);
            }
            Ok(None) => {
                assert_eq!(buf.len(), len_before, "Ok(None) consumed bytes");
                return decoded;
            }
            Err(_) => return decoded,
        }
    }
}
