//! Shared by the integration tests: a seeded generator of realistic record streams, the
//! model they are checked against, and small helpers.

#![allow(dead_code, clippy::unwrap_used)]

use cutie_persistence::{
    shard_dir, DurableState, Error, Lsn, Record, RecoveryReport, SimStorage, Storage, Wal,
    WalOptions,
};

/// The directory every test log lives in.
pub fn dir() -> String {
    shard_dir(0)
}

/// Small segments so that workloads rotate often.
pub fn options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 2048,
        ..WalOptions::new(0)
    }
}

pub fn skip_corrupt() -> WalOptions {
    WalOptions {
        skip_corrupt: true,
        ..options()
    }
}

pub type Opened<S> = (Wal<S>, DurableState, RecoveryReport);

pub fn open<S: Storage>(storage: S, options: WalOptions) -> Result<Opened<S>, Error> {
    Wal::open(storage, &dir(), options)
}

/// The state `records` rebuild from empty.
pub fn model_of<'a>(records: impl IntoIterator<Item = &'a Record>) -> DurableState {
    let mut state = DurableState::new();
    for record in records {
        let _ = state.apply(record);
    }
    state
}

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const CLIENTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta-with-a-longer-client-id"];
const FILTERS: [&str; 4] = ["a/#", "a/+/c", "sensors/+/temp", "#"];
const TOPICS: [&str; 4] = ["a/b/c", "sensors/1/temp", "status", "a"];

/// Produces records the way a broker would (mostly fitting the state it tracks), with a
/// few misfits mixed in (a duplicate PUBACK, a record for an unknown session).
#[derive(Clone, Debug)]
pub struct RecordGen {
    rng: Rng,
    state: DurableState,
    next_message_id: u64,
    next_packet_id: u16,
    payload_bytes_max: u64,
}

impl RecordGen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            state: DurableState::new(),
            next_message_id: 1,
            next_packet_id: 1,
            payload_bytes_max: 200,
        }
    }

    pub fn with_payload_bytes_max(mut self, max: u64) -> Self {
        self.payload_bytes_max = max;
        self
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = self.rng.below(self.payload_bytes_max + 1);
        (0..len).map(|_| self.rng.next() as u8).collect()
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.below(from.len() as u64) as usize]
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Forgets records that were appended but lost (not committed before a reopen).
    pub fn reset_to(&mut self, state: DurableState) {
        self.state = state;
    }

    pub fn next_record(&mut self) -> Record {
        let record = self.choose();
        let _ = self.state.apply(&record);
        record
    }

    fn choose(&mut self) -> Record {
        let client_id = self.pick(&CLIENTS).to_string();
        let session = self.state.session(&client_id).cloned();
        let Some(session) = session else {
            if self.rng.chance(90) {
                return Record::SessionPut { client_id };
            }
            // A misfit: a record for a session that does not exist.
            return Record::MessageDone {
                client_id,
                packet_id: self.rng.below(10) as u16,
            };
        };
        match self.rng.below(22) {
            0 => Record::Subscribe {
                client_id,
                filter: self.pick(&FILTERS).to_string(),
                qos: self.rng.below(3) as u8,
            },
            1 => Record::Unsubscribe {
                client_id,
                filter: self.pick(&FILTERS).to_string(),
            },
            2..=6 => {
                let message_id = self.next_message_id;
                self.next_message_id += 1;
                Record::MessageQueued {
                    client_id,
                    message_id,
                    topic: self.pick(&TOPICS).to_string(),
                    payload: self.payload(),
                    qos: 1 + self.rng.below(2) as u8,
                    retain: self.rng.chance(10),
                }
            }
            7..=9 => match session.queue().front() {
                Some(m) => Record::MessageSent {
                    client_id,
                    message_id: m.message_id,
                    packet_id: self.packet_id(),
                },
                None => Record::SessionPut { client_id },
            },
            10 | 11 => match session.inflight().keys().next() {
                Some(packet_id) => Record::MessageReleased {
                    client_id,
                    packet_id: *packet_id,
                },
                None => Record::RetainClear {
                    topic: self.pick(&TOPICS).to_string(),
                },
            },
            12 | 13 => {
                // Sometimes a PUBACK for a packet id that is not inflight: a misfit.
                let packet_id = match session.inflight().keys().next() {
                    Some(p) if self.rng.chance(90) => *p,
                    _ => self.rng.below(5) as u16,
                };
                Record::MessageDone {
                    client_id,
                    packet_id,
                }
            }
            14 => match session.queue().back() {
                Some(m) => Record::MessageDiscarded {
                    client_id,
                    message_id: m.message_id,
                },
                None => Record::SessionPut { client_id },
            },
            15 => Record::InboundQos2 {
                client_id,
                packet_id: 1 + self.rng.below(8) as u16,
                forward_id: u128::from(self.rng.below(4)),
            },
            16 => Record::InboundQos2Released {
                client_id,
                packet_id: 1 + self.rng.below(8) as u16,
            },
            17 => Record::RetainSet {
                topic: self.pick(&TOPICS).to_string(),
                payload: self.payload(),
                qos: self.rng.below(3) as u8,
            },
            18 => Record::RetainClear {
                topic: self.pick(&TOPICS).to_string(),
            },
            19 => Record::ForwardSeen {
                forward_id: u128::from(self.rng.below(6)) << 64,
            },
            20 => Record::ForwardDone {
                forward_id: u128::from(self.rng.below(6)) << 64,
            },
            _ => {
                if self.rng.chance(25) {
                    Record::SessionDrop { client_id }
                } else {
                    Record::SessionPut { client_id }
                }
            }
        }
    }

    pub fn records(seed: u64, n: usize) -> Vec<Record> {
        let mut generator = Self::new(seed);
        (0..n).map(|_| generator.next_record()).collect()
    }
}

/// Offsets where each frame of a segment starts, and the end of the file.
pub fn frame_offsets(segment: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = cutie_persistence::frame::FILE_HEADER_BYTES;
    loop {
        offsets.push(offset);
        match cutie_persistence::frame::read_frame(segment, offset) {
            cutie_persistence::frame::FrameRead::Frame { next, .. } => offset = next,
            _ => return offsets,
        }
    }
}

/// File names in the test directory, sorted.
pub fn files(storage: &SimStorage) -> Vec<String> {
    let mut names = storage.list(&dir()).unwrap();
    names.sort();
    names
}

/// Appends `records` and commits them in batches of `batch`.
pub fn write_all<S: Storage>(wal: &mut Wal<S>, records: &[Record], batch: usize) -> Lsn {
    for chunk in records.chunks(batch) {
        for record in chunk {
            wal.append(record).unwrap();
        }
        wal.commit().unwrap();
    }
    wal.durable_lsn()
}
