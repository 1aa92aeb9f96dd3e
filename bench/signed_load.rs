//! The load generator of `bench/run.sh`'s signed-webhook measurement: webhook-trigger
//! deliveries signed as GitHub signs them (`X-Hub-Signature-256` over the body), each with a
//! delivery id of its own (`X-GitHub-Delivery`), so that every one starts a job; or, with
//! `--token`, the same body on a token route, with `--idempotency-key` each with an
//! `Idempotency-Key` of its own (the same keyed path a delivery id takes). oha cannot vary a
//! header per request, hence this.
//!
//! ```sh
//! cargo run --release --example signed_load -- --url http://127.0.0.1:8000/api/w/demo/hooks/u/admin/bench_hook \
//!     --github-secret s3cret --seconds 10 --connections 64 --body-bytes 4096
//! ```
//!
//! Each connection is a keep-alive HTTP/1.1 client that sends its next request when the previous
//! one is answered. Prints, as JSON, the same summary fields oha's `--output-format json` has
//! (`summary.requestsPerSec`, `summary.slowest` and `latencyPercentiles` in seconds,
//! `statusCodeDistribution`, `errorDistribution`), so `bench.py oha` reads either.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    /// Sign each request as GitHub does, with this secret, and give it a delivery id.
    #[arg(long)]
    github_secret: Option<String>,
    /// Send `Authorization: Bearer <token>` instead.
    #[arg(long)]
    token: Option<String>,
    /// With `--token`: give each request an `Idempotency-Key` of its own.
    #[arg(long, requires = "token")]
    idempotency_key: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Size of the JSON body in bytes.
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
}

/// A JSON object of exactly `size` bytes (at least a few dozen).
fn body_of(size: usize) -> String {
    let head = r#"{"ref":"refs/heads/main","padding":""#;
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

async fn connection(
    args: &Args,
    body: &'static str,
    signature: Option<String>,
    run: &str,
    n: usize,
    until: Instant,
) -> Tally {
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let mut tally = Tally {
        latencies_us: Vec::new(),
        statuses: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    let mut sent = 0u64;
    while Instant::now() < until {
        let mut request = client
            .post(&args.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = &signature {
            request = request
                .header("x-hub-signature-256", signature)
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("{run}-{n}-{sent}"));
        }
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
            if args.idempotency_key {
                request = request.header("idempotency-key", format!("{run}-{n}-{sent}"));
            }
        }
        sent += 1;
        let began = Instant::now();
        let answered = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16().to_string();
                response.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        match answered {
            Ok(status) => {
                let us = began.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                *tally.statuses.entry(status).or_default() += 1;
            }
            Err(e) => *tally.errors.entry(e.to_string()).or_default() += 1,
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1e6
}

#[tokio::main]
async fn main() {
    let args: &'static Args = Box::leak(Box::new(Args::parse()));
    let body: &'static str = Box::leak(body_of(args.body_bytes).into_boxed_str());
    let signature = args.github_secret.as_ref().map(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    });
    // Delivery ids and keys unique across runs against the same instance.
    let run = format!("{:x}", uuid::Uuid::now_v7().as_u128() >> 64);
    let began = Instant::now();
    let until = began + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|n| {
            let (signature, run) = (signature.clone(), run.clone());
            tokio::spawn(async move { connection(args, body, signature, &run, n, until).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut statuses, mut errors) = (BTreeMap::new(), BTreeMap::new());
    for task in tasks {
        let tally = task.await.expect("a connection task");
        latencies.extend(tally.latencies_us);
        for (k, v) in tally.statuses {
            *statuses.entry(k).or_insert(0u64) += v;
        }
        for (k, v) in tally.errors {
            *errors.entry(k).or_insert(0u64) += v;
        }
    }
    let wall = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let out = json!({
        "summary": {
            "requestsPerSec": latencies.len() as f64 / wall,
            "slowest": percentile(&latencies, 100.0),
            "total": wall,
        },
        "latencyPercentiles": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
        },
        "statusCodeDistribution": statuses,
        "errorDistribution": errors,
    });
    println!("{out}");
}
