//! Client frames, channel_data and user_data: every input decodes to a value or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herald_protocol::frame::decode(text);
        let limits = herald_protocol::limits::Limits::default();
        let _ = herald_protocol::presence::parse_channel_data(text, limits.presence());
        let _ = herald_protocol::user::parse_user_data(text, 100);
        let _ = herald_protocol::ChannelName::parse(text, 200);
        let _ = herald_protocol::sign::decode_query(text);
    }
});
