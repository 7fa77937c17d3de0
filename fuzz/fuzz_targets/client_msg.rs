//! Browser/CLI protocol decoders: arbitrary bytes as `ClientMsg` (what the hub reads) and
//! `ServerMsg` (what the CLI reads), with the same round-trip check as `agent_msg`.

#![no_main]

use cmdx_proto::client::{ClientMsg, ServerMsg};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(msg) = serde_json::from_slice::<T>(data) {
        let once = serde_json::to_string(&msg).expect("a decoded message encodes");
        let again: T = serde_json::from_str(&once).expect("an encoded message decodes");
        assert_eq!(once, serde_json::to_string(&again).expect("encodes"));
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientMsg>(data);
    round_trip::<ServerMsg>(data);
});
