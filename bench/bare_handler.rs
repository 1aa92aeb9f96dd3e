//! The yardstick of the ingestion benchmark: the least an HTTP endpoint that queues durably
//! can do. An axum handler that publishes each request's body to JetStream, with a fresh
//! UUIDv7 as `Nats-Msg-Id` (as Millrace publishes a job), waits for the PubAck and answers 201
//! with the id. No authentication, no database, no parsing. `bench/run.sh` measures it with the
//! same load generator, connections and duration as Millrace's async ingestion, against the same
//! nats-server and stream (`MILLRACE_JOBS`, on a tag no worker serves), and reports the ratio.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 NATS_USER=api NATS_PASSWORD=… \
//!     cargo run --release --example bare_handler -- --listen 127.0.0.1:0
//! ```
//!
//! It prints `listening on <address>` once it serves. Not part of the product: an example
//! target, built only on request.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The NATS server to publish to.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "NATS_USER")]
    nats_user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// The subject every request is published to; a stream must capture it.
    #[arg(long, default_value = "millrace.jobs.bench_bare")]
    subject: String,
    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Clone)]
struct Publisher {
    js: jetstream::Context,
    subject: async_nats::Subject,
}

async fn publish(State(publisher): State<Publisher>, body: Bytes) -> (StatusCode, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    let acked = async {
        publisher
            .js
            .publish_with_headers(publisher.subject.clone(), headers, body)
            .await?
            .await
            .map_err(async_nats::Error::from)
    };
    match tokio::time::timeout(Duration::from_secs(10), acked).await {
        Ok(Ok(_)) => (StatusCode::CREATED, id),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "no PubAck".into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = match (args.nats_user, args.nats_password) {
        (Some(user), Some(password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        _ => async_nats::ConnectOptions::new(),
    };
    // Millrace's `api` user may take replies only on its own inboxes.
    let client = options
        .custom_inbox_prefix("_INBOX_api")
        .connect(args.nats_url.as_str())
        .await?;
    let publisher = Publisher {
        js: jetstream::new(client),
        subject: args.subject.into(),
    };
    let app = Router::new()
        .route("/publish", post(publish))
        .with_state(publisher);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
