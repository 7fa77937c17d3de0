//! Search over a job's whole stored log (`GET /api/jobs/{id}/output/search`): a match on line 5
//! of a 100,000-line log is found, pages resume where the last stopped (by match count and by
//! the per-request scan budget) and together read every line once; visibility is the log's.

use cmdx_e2e::{FakeAgent, HubProc};
use cmdx_proto::StreamKind;
use cmdx_proto::agent::{AgentMsg, OutputChunk};
use serde_json::{Value, json};

use crate::FAST;

const LINES: u64 = 100_000;

/// Line `n` (1-based) of the test log: 88 bytes, so the whole log (8.8 MB) is over one
/// request's 8 MiB scan budget.
fn line(n: u64) -> String {
    let mark = match n {
        5 => "NEEDLE-Five",
        99_995 => "\x1b[31mneedle-FIVE\x1b[0m",
        99_990 => "needle-five",
        _ => "haystack...",
    };
    format!(
        "{n:06} {mark} {}\n",
        "x".repeat(88 - 7 - 1 - mark.len() - 1)
    )
}

fn query(path: &str, params: &[(&str, &str)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    format!("{path}?{}", q.join("&"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn search_finds_line_5_of_100k_lines_pages_and_hides_foreign_jobs() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "searcher@test.local").await;
    let id = hub.submit(&user, json!({"command": "print a lot"})).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "printer", 1, vec![])
        .await
        .unwrap();
    a.next_assignment().await.unwrap();
    let mut log = Vec::new();
    let mut seq = 0;
    for first in (1..=LINES).step_by(1000) {
        let data: String = (first..first + 1000).map(line).collect();
        log.extend_from_slice(data.as_bytes());
        a.send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream: StreamKind::Stdout,
            data: data.into_bytes().into(),
        }))
        .await
        .unwrap();
        seq += 1;
    }
    a.finish(&id, 1, seq, 0).await.unwrap();
    let path = format!("/api/jobs/{id}/output/search");
    let offset_of = |n: u64| (n - 1) * 88;

    // The first match is line 5, at its byte offset; one match per page here.
    let (s, first) = hub
        .get(
            &user,
            &query(&path, &[("q", "needle-five"), ("limit", "1")]),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["startOffset"], 0);
    assert_eq!(first["matches"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["matches"][0]["line"], 5);
    assert_eq!(first["matches"][0]["offset"], offset_of(5));
    assert!(
        first["matches"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("000005 NEEDLE-Five x"),
        "{first}"
    );
    assert_eq!(first["linesScanned"], 5);
    assert_eq!(first["next"], format!("6:{}", offset_of(6)));

    // Paging on from there reads every remaining line once, finds the other two (escape
    // sequences removed from the text), and some page stops on the scan budget with no match.
    let (mut cursor, mut lines, mut found) =
        (first["next"].as_str().unwrap().to_string(), 5, vec![5]);
    let mut budget_stops = 0;
    let mut pages = 1;
    loop {
        let (s, page) = hub
            .get(
                &user,
                &query(
                    &path,
                    &[("q", "NEEDLE-FIVE"), ("limit", "1"), ("cursor", &cursor)],
                ),
            )
            .await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        assert!(pages < 20, "paging does not end");
        lines += page["linesScanned"].as_u64().unwrap();
        let matches = page["matches"].as_array().unwrap();
        if matches.is_empty() && page["next"].is_string() {
            budget_stops += 1;
            assert!(page["bytesScanned"].as_u64().unwrap() >= 8 << 20, "{page}");
        }
        for m in matches {
            let n = m["line"].as_u64().unwrap();
            assert_eq!(m["offset"], offset_of(n));
            assert!(!m["text"].as_str().unwrap().contains('\x1b'), "{m}");
            found.push(n);
        }
        match &page["next"] {
            Value::String(next) => cursor = next.clone(),
            _ => {
                assert_eq!(page["line"], LINES + 1);
                assert_eq!(page["offset"], log.len() as u64);
                break;
            }
        }
    }
    assert_eq!(found, vec![5, 99_990, 99_995]);
    assert_eq!(lines, LINES, "every line read once across pages");
    assert!(budget_stops >= 1, "no page stopped on the scan budget");

    // Case-sensitive: only the exact spelling.
    let (s, exact) = hub
        .get(
            &user,
            &query(&path, &[("q", "NEEDLE-Five"), ("case", "sensitive")]),
        )
        .await;
    assert_eq!(s, 200);
    let mut lines: Vec<u64> = exact["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["line"].as_u64().unwrap())
        .collect();
    let mut next = exact["next"].clone();
    while let Value::String(c) = next {
        let (_, page) = hub
            .get(
                &user,
                &query(
                    &path,
                    &[("q", "NEEDLE-Five"), ("case", "sensitive"), ("cursor", &c)],
                ),
            )
            .await;
        lines.extend(
            page["matches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["line"].as_u64().unwrap()),
        );
        next = page["next"].clone();
    }
    assert_eq!(lines, vec![5]);

    // Another user, and an unknown job: 404, as for the log itself.
    let nosy = hub.user(&admin, "nosy-searcher@test.local").await;
    let (s, body) = hub.get(&nosy, &query(&path, &[("q", "needle")])).await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = hub.get(&nosy, &format!("/api/jobs/{id}/output")).await;
    assert_eq!(s, 404);
    let (s, _) = hub
        .get(&user, "/api/jobs/no-such-job/output/search?q=needle")
        .await;
    assert_eq!(s, 404);
    // The admin sees it.
    let (s, _) = hub.get(&admin, &query(&path, &[("q", "needle")])).await;
    assert_eq!(s, 200);

    // Malformed queries: 400 with a message.
    let long = "x".repeat(1025);
    for bad in [
        vec![],
        vec![("q", "")],
        vec![("q", long.as_str())],
        vec![("q", "a"), ("limit", "0")],
        vec![("q", "a"), ("limit", "1001")],
        vec![("q", "a"), ("limit", "ten")],
        vec![("q", "a"), ("cursor", "12")],
        vec![("q", "a"), ("cursor", "0:0")],
        vec![("q", "a"), ("cursor", "1:-5")],
        vec![("q", "a"), ("case", "upper")],
    ] {
        let (s, body) = hub.get(&user, &query(&path, &bad)).await;
        assert_eq!(s, 400, "{bad:?}: {body}");
        assert_eq!(body["code"], "bad_request", "{bad:?}: {body}");
    }
}
