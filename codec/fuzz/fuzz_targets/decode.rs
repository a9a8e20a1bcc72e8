//! Fuzz the streaming decoder: no input may panic, and every packet it accepts must
//! survive encode -> decode unchanged. See `../decode_check.rs`.
#![no_main]

#[path = "../decode_check.rs"]
mod decode_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    decode_check::check(data);
});
