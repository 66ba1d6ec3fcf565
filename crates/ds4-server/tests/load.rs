//! Bounded load test on loopback: 64 concurrent streaming clients per round, every fourth one
//! disconnecting halfway. Every completed stream must be well-formed, cancelled ones must free
//! the engine (queue drains, worker idle), and resident memory must not grow across rounds.
//! Prints the figures recorded in docs/perf.md.

mod common;

use std::time::Instant;

use common::{data_json, parse_sse, start, Opts};
use serde_json::json;

const CLIENTS: usize = 64;
const ROUNDS: usize = 3;
const MAX_TOKENS: u64 = 8;

fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

async fn client(base: String, i: usize) -> Result<bool, String> {
    let http = reqwest::Client::new();
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": MAX_TOKENS,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("client {i} says hello")}]});
    let mut r = http
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let disconnect = i % 4 == 3;
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        text.push_str(std::str::from_utf8(&chunk).map_err(|e| e.to_string())?);
        if disconnect && text.matches("\n\n").count() >= 4 {
            return Ok(false); // drop mid-stream
        }
    }
    let frames = parse_sse(&text);
    if frames.last().map(|f| f.1.as_str()) != Some("[DONE]") {
        return Err(format!("client {i}: no [DONE]"));
    }
    let chunks = data_json(&frames);
    let first_ok = chunks
        .first()
        .map(|c| c["choices"][0]["delta"]["role"] == "assistant")
        == Some(true);
    let finish_ok = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .count()
        == 1;
    let usage_ok = chunks
        .last()
        .map(|c| c["usage"]["completion_tokens"] == MAX_TOKENS)
        == Some(true);
    if !(first_ok && finish_ok && usage_ok) {
        return Err(format!("client {i}: malformed stream {text}"));
    }
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streaming_clients_with_disconnects_stay_well_formed_and_bounded() {
    let s = start(Opts {
        ctx: 512,
        ..Opts::default()
    })
    .await;
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(client(s.base.clone(), i)))
            .collect();
        let (mut completed, mut cancelled) = (0, 0);
        for h in handles {
            match h.await.expect("client task") {
                Ok(true) => completed += 1,
                Ok(false) => cancelled += 1,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        // Cancelled streams free the engine: the queue drains and the worker goes idle.
        let drain = Instant::now();
        while s.state.scheduler.queue_depth() > 0 || s.state.scheduler.is_busy() {
            assert!(drain.elapsed().as_secs() < 60, "queue did not drain");
            tokio::task::yield_now().await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let mem = rss_kib();
        eprintln!("load round {round}: {completed} completed, {cancelled} cancelled, {secs:.2} s, rss {mem:?} KiB");
        assert_eq!(completed, CLIENTS - CLIENTS / 4);
        rss.extend(mem);
    }
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!(
        "{}",
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if rss.len() == ROUNDS {
        // Round 0 warms allocators; later rounds must not keep growing.
        let growth = rss[ROUNDS - 1].saturating_sub(rss[1]);
        assert!(
            growth < 32 * 1024,
            "rss grew {growth} KiB across rounds: {rss:?}"
        );
    }
}
