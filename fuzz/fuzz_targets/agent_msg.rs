//! Agent protocol decoders: arbitrary bytes as `AgentMsg` (what the hub reads) and `HubMsg`
//! (what the agent reads). A message that decodes must re-encode to JSON that decodes to the
//! same encoding (no lossy or asymmetric serde attributes).

#![no_main]

use cmdx_proto::agent::{AgentMsg, HubMsg};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(msg) = serde_json::from_slice::<T>(data) {
        let once = serde_json::to_string(&msg).expect("a decoded message encodes");
        let again: T = serde_json::from_str(&once).expect("an encoded message decodes");
        assert_eq!(once, serde_json::to_string(&again).expect("encodes"));
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<AgentMsg>(data);
    round_trip::<HubMsg>(data);
});
