//! The decoders are total: mutated pusher-js frames and API bodies give a value or an error,
//! never a panic. (The cargo-fuzz targets in `fuzz/` explore the same functions without bounds.)

use herald_protocol::{api, frame, limits::Limits, presence, user, ChannelName};

const SEEDS: &[&str] = &[
    r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":10}","channel":"presence-x"}}"#,
    r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\",\"watchlist\":[\"2\"]}"}}"#,
    r#"{"event":"client-x","channel":"private-a","data":{"a":[1,2,{"b":null}]}}"#,
    r#"{"name":"e","data":"{\"x\":1}","channels":["a","presence-b"],"socket_id":"1.2","info":"user_count"}"#,
    r#"{"batch":[{"channel":"a","name":"e","data":"1","info":"subscription_count"}]}"#,
];

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate(seed: &str, rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..(1 + rng.next() % 4) {
        if b.is_empty() {
            break;
        }
        let i = (rng.next() as usize) % b.len();
        match rng.next() % 4 {
            0 => b[i] = (rng.next() % 256) as u8,
            1 => {
                b.remove(i);
            }
            2 => {
                const PUNCT: &[u8] = b"{}[]\":,\\0";
                b.insert(i, PUNCT[(rng.next() as usize) % PUNCT.len()]);
            }
            _ => b.truncate(i),
        }
    }
    b
}

#[test]
fn mutated_inputs_never_panic() {
    let limits = Limits::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let input = mutate(SEEDS[round % SEEDS.len()], &mut rng);
        let _ = api::parse_trigger(&input, &limits);
        let _ = api::parse_batch(&input, &limits);
        if let Ok(text) = std::str::from_utf8(&input) {
            let _ = frame::decode(text);
            let _ = presence::parse_channel_data(text, limits.presence());
            let _ = user::parse_user_data(text, 100);
            let _ = ChannelName::parse(text, 200);
            let _ = herald_protocol::sign::decode_query(text);
        }
    }
}
