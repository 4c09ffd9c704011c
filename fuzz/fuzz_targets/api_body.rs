//! HTTP API bodies: every input is a validated request or an `ApiError`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = herald_protocol::limits::Limits::default();
    let _ = herald_protocol::api::parse_trigger(data, &limits);
    let _ = herald_protocol::api::parse_batch(data, &limits);
});
