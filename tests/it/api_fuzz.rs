//! The API under a fuzzer: schemathesis (`SCHEMATHESIS_BIN`) generates requests from
//! `/api/openapi.json` for every operation, with a workspace admin's token, and checks that no
//! answer is a server error and every answer matches its documented schema; the processes'
//! logs must hold no panic. CI runs a short, seeded pass; `FUZZ_SECONDS` and `FUZZ_SEED` make a
//! longer or different one (docs/reliability.md).

use std::process::Command;

use crate::common::{TestEnv, WS};

#[tokio::test]
async fn fuzzed_requests_get_no_server_error_and_match_the_document() {
    let st = std::env::var_os("SCHEMATHESIS_BIN").unwrap_or_else(|| {
        panic!("SCHEMATHESIS_BIN is not set: scripts/tools.sh fuzz installs schemathesis")
    });
    let seconds = std::env::var("FUZZ_SECONDS").unwrap_or_else(|_| "60".into());
    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let env = TestEnv::with(crate::common::Options {
        workers: 1,
        s3: true,
        // The fuzzer sends many requests without a valid token on purpose; it should reach the
        // handlers behind them rather than the limiter of failed authentications.
        api_env: vec![("AUTH_FAILURES_PER_MINUTE".into(), "1000000".into())],
        ..Default::default()
    })
    .await;
    env.script("u/alice/echo", "bash", "x=\"$1\"\necho \"$x\"\n")
        .await;
    let config = env.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.workspace\" = \"{WS}\"\n"),
    )
    .unwrap();
    let run = tokio::task::spawn_blocking({
        let url = env.url("/api/openapi.json");
        let token = env.token.clone();
        let dir = env.dir.path().to_path_buf();
        move || {
            Command::new(st)
                // It keeps a cache and its reports in the working directory.
                .current_dir(&dir)
                .arg("--config-file")
                .arg(&config)
                .args(["run", &url])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args(["--checks", "not_a_server_error,response_schema_conformance"])
                // Revoking its own token or logging out would leave the rest of the run with
                // nothing but 401s.
                .args(["--exclude-path-regex", "tokens/delete|logout"])
                .args(["--max-time", &seconds, "--seed", &seed])
                .args(["--workers", "2", "--request-timeout", "30"])
                .env("NO_COLOR", "1")
                .output()
                .expect("schemathesis runs")
        }
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let tail: Vec<&str> = out.lines().filter(|l| !l.starts_with("  - ")).collect();
    assert!(
        run.status.success(),
        "schemathesis found failures ({}):\n{}\n{}",
        run.status,
        tail[tail.len().saturating_sub(120)..].join("\n"),
        String::from_utf8_lossy(&run.stderr)
    );
    // Its summary, for the record (seen with --nocapture).
    if let Some(summary) = out.find("SUMMARY") {
        println!("{}", &out[summary..]);
    }
    // "Tested: 87" in its summary: nearly every operation was reached.
    let tested: usize = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        tested >= 80,
        "schemathesis tested {tested} operations:\n{out}"
    );
    let logs = env.logs();
    assert!(!logs.contains("panicked"), "a process panicked:\n{logs}");
}
