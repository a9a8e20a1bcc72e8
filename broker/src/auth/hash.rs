//! One password hash in Mosquitto's `password_file` encodings.
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, what `mosquitto_passwd` writes
//!   since Mosquitto 2.0 and what [`PasswordHash::new`] writes here;
//! - `$6$<salt>$<hash>`: one SHA-512 over `password || salt`, Mosquitto 1.x's format. It
//!   is read so that old files keep working, never written: it costs an attacker with the
//!   file one hash per guess.
//!
//! `<salt>` and `<hash>` are standard base64 (padded as `mosquitto_passwd` writes them;
//! unpadded is accepted too) of exactly [`SALT_BYTES`] and [`HASH_BYTES`] bytes:
//! Mosquitto drops entries of any other size, and a file written here must load there.
//!
//! Cost: one [`PasswordHash::verify`] of a `$7$` hash is `2 * iterations` SHA-512
//! compressions; at [`PBKDF2_ITERATIONS`] that is about 1.9 ms on one core of the
//! development machine (AMD EPYC, release build). It runs on a shard thread at CONNECT
//! time.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

/// PBKDF2 iterations of the hashes written here.
///
/// Verification runs on a shard thread while it answers a CONNECT, so the cost is paid
/// by every connection on that shard, and a connection storm of N clients costs N times
/// this much CPU. 4096 iterations (EMQX's default for PBKDF2) measure about 1.9 ms per
/// verification on the development machine (AMD EPYC, release build, one core; about
/// 0.46 us per iteration; see the `measure_hash_cost` test): 40 times Mosquitto's default
/// of 101 for a brute-force attacker holding the file, and still small next to a TCP
/// handshake plus CONNECT round trip. It is far below OWASP's
/// recommendation for an offline attacker (210,000 for PBKDF2-HMAC-SHA512): the password
/// file must stay private (mode 0600) either way.
pub const PBKDF2_ITERATIONS: u32 = 4096;

/// The largest iteration count a loaded hash may ask for: about 46 ms per verification
/// at the cost above. A file asking for more would stall a shard for every CONNECT of
/// that user, so it is refused at load time.
pub const PBKDF2_ITERATIONS_MAX: u32 = 100_000;

/// Salt length: 12 bytes, what `mosquitto_passwd` writes and what Mosquitto requires.
pub const SALT_BYTES: usize = 12;

/// Hash length: one SHA-512 output, what Mosquitto requires.
pub const HASH_BYTES: usize = 64;

/// Standard base64 alphabet; writes padding, reads with or without it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Stands in for the hash of a user who does not exist, so that rejecting an unknown
/// user costs what rejecting a wrong password costs (one PBKDF2 at the default count).
/// Its hash bytes are all zeros; [`verify_dummy`] discards the result anyway.
const DUMMY: PasswordHash = PasswordHash {
    scheme: Scheme::Pbkdf2Sha512 {
        iterations: PBKDF2_ITERATIONS,
    },
    salt: [0; SALT_BYTES],
    hash: [0; HASH_BYTES],
};

/// Why a hash string was not accepted. The string itself is never part of the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Neither `$6$` nor `$7$`.
    #[error("unknown hash format (expected $7$<iterations>$<salt>$<hash> or $6$<salt>$<hash>)")]
    UnknownScheme,
    /// The wrong number of `$`-separated fields for its scheme.
    #[error("malformed hash: wrong number of '$'-separated fields")]
    Fields,
    /// The iteration count is not a decimal number from 1 to [`PBKDF2_ITERATIONS_MAX`].
    #[error("invalid iteration count (expected 1 to {PBKDF2_ITERATIONS_MAX})")]
    Iterations,
    /// The salt is not base64 of exactly [`SALT_BYTES`] bytes.
    #[error("invalid salt (expected base64 of {SALT_BYTES} bytes)")]
    Salt,
    /// The hash is not base64 of exactly [`HASH_BYTES`] bytes.
    #[error("invalid hash (expected base64 of {HASH_BYTES} bytes)")]
    Hash,
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes for a salt from the operating system")]
    Random,
}

/// How a [`PasswordHash`] was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `$6$`: SHA-512 of `password || salt`.
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2Sha512 { iterations: u32 },
}

/// A salted password hash. [`fmt::Display`] writes it in the file format; `Debug` shows
/// only the scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    scheme: Scheme,
    salt: [u8; SALT_BYTES],
    hash: [u8; HASH_BYTES],
}

impl PasswordHash {
    /// Hashes `password` with PBKDF2-HMAC-SHA512 at [`PBKDF2_ITERATIONS`] and a fresh salt
    /// from the operating system's random number generator.
    pub fn new(password: &[u8]) -> Result<Self, HashError> {
        let mut salt = [0; SALT_BYTES];
        getrandom::getrandom(&mut salt).map_err(|_| HashError::Random)?;
        Ok(Self::with_salt(password, salt, PBKDF2_ITERATIONS))
    }

    /// Hashes `password` with PBKDF2-HMAC-SHA512 and the given salt and iteration count.
    pub fn with_salt(password: &[u8], salt: [u8; SALT_BYTES], iterations: u32) -> Self {
        let scheme = Scheme::Pbkdf2Sha512 { iterations };
        let hash = digest(scheme, password, &salt);
        PasswordHash { scheme, salt, hash }
    }

    /// Parses one hash as it appears after `user:` in a password file.
    pub fn parse(text: &str) -> Result<Self, HashError> {
        let fields: Vec<&str> = text.split('$').collect();
        let (scheme, salt, hash) = match fields.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations = parse_iterations(iterations)?;
                (Scheme::Pbkdf2Sha512 { iterations }, salt, hash)
            }
            ["", "6", salt, hash] => (Scheme::Sha512, salt, hash),
            ["", "6" | "7", ..] => return Err(HashError::Fields),
            _ => return Err(HashError::UnknownScheme),
        };
        Ok(PasswordHash {
            scheme,
            salt: decode_exact(salt).ok_or(HashError::Salt)?,
            hash: decode_exact(hash).ok_or(HashError::Hash)?,
        })
    }

    /// How this hash was computed.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether `password` hashes to this hash. The comparison takes the same time
    /// wherever the first differing byte is.
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = digest(self.scheme, password, &self.salt);
        bool::from(computed.ct_eq(&self.hash))
    }
}

/// Does the work of one verification at the default cost and returns false: the answer
/// for a user who does not exist, in the time a wrong password takes.
pub fn verify_dummy(password: &[u8]) -> bool {
    // black_box: PBKDF2 has no side effects, so without it the call could be optimised
    // away, and an unknown user would be answered faster than a known one.
    std::hint::black_box(DUMMY.verify(std::hint::black_box(password)));
    false
}

fn parse_iterations(text: &str) -> Result<u32, HashError> {
    // u32::from_str accepts a leading '+'; the file format does not.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HashError::Iterations);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=PBKDF2_ITERATIONS_MAX).contains(&n) => Ok(n),
        _ => Err(HashError::Iterations),
    }
}

fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = BASE64.decode(text).ok()?;
    bytes.try_into().ok()
}

fn digest(scheme: Scheme, password: &[u8], salt: &[u8; SALT_BYTES]) -> [u8; HASH_BYTES] {
    let mut out = [0; HASH_BYTES];
    match scheme {
        Scheme::Sha512 => {
            let mut hasher = Sha512::new();
            hasher.update(password);
            hasher.update(salt);
            out.copy_from_slice(&hasher.finalize());
        }
        Scheme::Pbkdf2Sha512 { iterations } => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
        }
    }
    out
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Sha512 => f.write_str("$6$")?,
            Scheme::Pbkdf2Sha512 { iterations } => write!(f, "$7${iterations}$")?,
        }
        write!(
            f,
            "{}${}",
            BASE64.encode(self.salt),
            BASE64.encode(self.hash)
        )
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Written by `mosquitto_passwd -b` (Mosquitto 2.0.11) for password "pass".
    const MOSQUITTO_PBKDF2: &str = "$7$101$5XJc27wMfoRSpHYk$vmY2aFljA9kCyawsD23P2n0qjHNQBlwXN+\
        HEoOU9yCTuAPRd+GWSYuFjy3bTBBx4KArRTwsv0SIinO3BjSQ/JQ==";
    /// Written by `mosquitto_passwd -b -H sha512` for password "pass".
    const MOSQUITTO_SHA512: &str = "$6$mX9krrPci/h8WRBr$F2lJGtI4nZ/bzEEQ+DN5YIh23jK2GhfFmmE0+\
        9BbdS2XK4N09R0hWRzEvc3DFszg10CJOBIBSDazVEiDDXqRXw==";

    #[test]
    fn mosquitto_pbkdf2_hash_verifies_its_password_only() {
        let hash = PasswordHash::parse(MOSQUITTO_PBKDF2).unwrap();
        assert_eq!(hash.scheme(), Scheme::Pbkdf2Sha512 { iterations: 101 });
        assert!(hash.verify(b"pass"));
        assert!(!hash.verify(b"pass "));
        assert!(!hash.verify(b""));
    }

    #[test]
    fn mosquitto_sha512_hash_verifies_its_password_only() {
        let hash = PasswordHash::parse(MOSQUITTO_SHA512).unwrap();
        assert_eq!(hash.scheme(), Scheme::Sha512);
        assert!(hash.verify(b"pass"));
        assert!(!hash.verify(b"Pass"));
    }

    #[test]
    fn hashes_round_trip_through_the_file_format() {
        for text in [MOSQUITTO_PBKDF2, MOSQUITTO_SHA512] {
            assert_eq!(PasswordHash::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let unpadded = MOSQUITTO_PBKDF2.trim_end_matches('=');
        assert!(PasswordHash::parse(unpadded).unwrap().verify(b"pass"));
    }

    #[test]
    fn new_hash_uses_the_default_iterations_and_a_fresh_salt() {
        let a = PasswordHash::new(b"secret").unwrap();
        let b = PasswordHash::new(b"secret").unwrap();
        assert_eq!(
            a.scheme(),
            Scheme::Pbkdf2Sha512 {
                iterations: PBKDF2_ITERATIONS
            }
        );
        assert_ne!(a.salt, b.salt, "salts come from the OS RNG");
        assert!(a.verify(b"secret") && b.verify(b"secret"));
        let text = a.to_string();
        assert!(
            text.starts_with(&format!("$7${PBKDF2_ITERATIONS}$")),
            "{text}"
        );
        assert_eq!(PasswordHash::parse(&text).unwrap(), a);
    }

    #[test]
    fn malformed_hashes_are_refused_with_the_reason() {
        let salt = BASE64.encode([1u8; SALT_BYTES]);
        let hash = BASE64.encode([2u8; HASH_BYTES]);
        let cases = [
            ("secret", HashError::UnknownScheme),
            ("$5$abc$def", HashError::UnknownScheme),
            ("$7$", HashError::Fields),
            (&format!("$7$101${salt}"), HashError::Fields),
            (&format!("$7$101${salt}${hash}$"), HashError::Fields),
            (&format!("$6$101${salt}${hash}"), HashError::Fields),
            (&format!("$7$0${salt}${hash}"), HashError::Iterations),
            (&format!("$7$+5${salt}${hash}"), HashError::Iterations),
            (&format!("$7$x${salt}${hash}"), HashError::Iterations),
            (&format!("$7$${salt}${hash}"), HashError::Iterations),
            (&format!("$7$100001${salt}${hash}"), HashError::Iterations),
            (
                &format!("$7$99999999999${salt}${hash}"),
                HashError::Iterations,
            ),
            (&format!("$7$101$AAAA${hash}"), HashError::Salt),
            (&format!("$7$101$!!!!${hash}"), HashError::Salt),
            (&format!("$7$101${salt}$AAAA"), HashError::Hash),
            (&format!("$6${salt}${salt}"), HashError::Hash),
        ];
        for (text, want) in cases {
            assert_eq!(PasswordHash::parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn debug_does_not_show_the_hash() {
        let hash = PasswordHash::parse(MOSQUITTO_PBKDF2).unwrap();
        let debug = format!("{hash:?}");
        assert!(
            !debug.contains("5XJc27wM") && !debug.contains("vmY2aF"),
            "{debug}"
        );
    }

    #[test]
    fn dummy_verification_is_false_and_costs_a_default_hash() {
        assert!(!verify_dummy(b""));
        assert!(!verify_dummy(b"anything"));
        assert_eq!(
            DUMMY.scheme(),
            Scheme::Pbkdf2Sha512 {
                iterations: PBKDF2_ITERATIONS
            }
        );
    }

    /// Prints what one verification costs; measured, not asserted. Run with
    /// `cargo test --release -p cutie-broker -- --ignored --nocapture measure_hash_cost`.
    #[test]
    #[ignore = "measurement, not a check; run in release"]
    fn measure_hash_cost() {
        let hash = PasswordHash::new(b"secret").unwrap();
        let rounds = 200;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(hash.verify(std::hint::black_box(b"secret")));
        }
        let per = start.elapsed() / rounds;
        println!("PBKDF2-HMAC-SHA512, {PBKDF2_ITERATIONS} iterations: {per:?} per verification");
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(verify_dummy(std::hint::black_box(b"secret")));
        }
        println!("unknown user (dummy): {:?}", start.elapsed() / rounds);
    }
}
