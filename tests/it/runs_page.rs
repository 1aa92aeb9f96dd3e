//! The Runs page at `/`: how it is served (content types, caching, security headers), the
//! routes it adds (workspaces list, one-time login links, logout), and the page itself in a
//! real browser — Debian's Chromium driven by Playwright for Python (`tests/it/runs_page.py`),
//! as `scripts/tools.sh browser` installs them. Screenshots go to `target/screenshots/`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Options, TestEnv, WS};

/// The Python with Playwright, and the Chromium it drives. Never skipped: without them the
/// test fails saying which tools step installs them.
fn browser_tools() -> (String, String) {
    let python = std::env::var("PLAYWRIGHT_PYTHON").unwrap_or_else(|_| {
        panic!(
            "PLAYWRIGHT_PYTHON is not set: run `eval \"$(bash scripts/tools.sh browser)\"` \
             (Chromium from Debian and a venv with Playwright)"
        )
    });
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run `bash scripts/tools.sh browser` (apt-get install chromium)"
    );
    (python, chromium)
}

fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

/// Runs one scenario of runs_page.py with `settings`; returns the JSON it prints last.
async fn browser(env: &TestEnv, scenario: &str, mut settings: Value) -> Value {
    let (python, chromium) = browser_tools();
    settings["base"] = json!(env.api_url);
    settings["ws"] = json!(WS);
    settings["chromium"] = json!(chromium);
    settings["screenshots"] = json!(screenshots_dir());
    settings["token"] = json!(env.token);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/runs_page.py");
    let scenario = scenario.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python)
            .arg(script)
            .arg(&scenario)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Playwright program");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(settings.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser scenario failed ({}):\nstdout: {stdout}\nstderr: {}\nserver logs:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&env.logs(), 60)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A one-time login code for `email`, made as `millrace dev` makes one (its hash stored),
/// valid for `minutes` (negative: expired already).
/// `POST /api/auth/login_code` with `code`, without other credentials.
async fn redeem(env: &TestEnv, code: &str) -> crate::common::Response {
    env.request(
        reqwest::Method::POST,
        "/api/auth/login_code",
        None,
        Some(json!({"code": code})),
    )
    .await
}

async fn login_code(env: &TestEnv, email: &str, minutes: i64) -> String {
    let code = format!("code-{}", uuid::Uuid::new_v4().simple());
    let hash = millrace::auth::token::hash(&code).to_vec();
    env.sql()
        .await
        .execute(
            "INSERT INTO login_codes (hash, email, expires_at)
             VALUES ($1, $2, now() + make_interval(mins => $3))",
            &[&hash, &email, &(minutes as i32)],
        )
        .await
        .unwrap();
    code
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_strict_headers_and_caching() {
    let env = TestEnv::with(Default::default()).await;
    let page = env.http.get(env.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("cache-control"), "no-cache");
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    let etag = header("etag");
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>Runs · Millrace</title>"), "{html}");

    // Revalidation: the same page answers 304 without a body.
    let again = env
        .http
        .get(env.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.text().await.unwrap().is_empty());

    // Every asset the page names is served under its hashed name, immutable, with its type.
    let mut names = Vec::new();
    for piece in html.split("\"/ui/").skip(1) {
        names.push(piece.split('"').next().unwrap().to_owned());
    }
    assert_eq!(names.len(), 3, "{names:?}");
    for name in &names {
        let res = env
            .http
            .get(env.url(&format!("/ui/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{name}");
        let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
        let wanted = match name.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other}"),
        };
        assert_eq!(content_type, wanted, "{name}");
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        // The hash in the name is the content's.
        let stem_hash = name.split('.').nth(1).unwrap();
        assert_eq!(stem_hash.len(), 16, "{name}");
    }
    // An unhashed or unknown name is a plain 404.
    let res = env.http.get(env.url("/ui/app.js")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.text().await.unwrap().starts_with("Not found: "));
}

#[tokio::test]
async fn workspaces_list_login_links_and_logout() {
    // Behind one trusted proxy, which says in X-Forwarded-Proto how the browser came.
    let env = TestEnv::with(Options {
        api_env: vec![("TRUSTED_PROXY_HOPS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    // Alice (admin of `test`) sees her workspace with her role; Bob, a member, his.
    let list = env
        .get("/api/workspaces/list", &env.token)
        .await
        .expect(200)
        .json();
    assert_eq!(
        list,
        json!([{"id": WS, "name": "Test", "username": "alice", "is_admin": true, "operator": false}])
    );
    let bob = env.user_token("bob@example.com", "bob", false, true).await;
    env.post(
        "/api/workspaces/create",
        &env.token,
        json!({"id": "other", "name": "Other"}),
    )
    .await
    .expect(201);
    let list = env
        .get("/api/workspaces/list", &bob)
        .await
        .expect(200)
        .json();
    assert_eq!(
        list,
        json!([{"id": WS, "name": "Test", "username": "bob", "is_admin": false, "operator": true}])
    );
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = env
        .get("/api/workspaces/list", &env.token)
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&list), ["other", WS]);
    // A token made for one workspace lists that one only.
    let bound = env
        .post(
            "/api/users/tokens/create",
            &env.token,
            json!({"workspace_id": "other"}),
        )
        .await
        .expect(201)
        .text;
    let list = env
        .get("/api/workspaces/list", &bound)
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&list), ["other"]);
    env.request(reqwest::Method::GET, "/api/workspaces/list", None, None)
        .await
        .expect(401);
    // Listing is a read: a token that may only run (a webhook's) is refused, one with a read
    // scope lists.
    let scoped = |scopes: Value| {
        let env = &env;
        async move {
            env.post(
                "/api/users/tokens/create",
                &env.token,
                json!({ "scopes": scopes }),
            )
            .await
            .expect(201)
            .text
        }
    };
    let runs_only = scoped(json!(["jobs:run:scripts:u/alice/hook"])).await;
    let refused = env
        .get("/api/workspaces/list", &runs_only)
        .await
        .expect(403);
    assert!(
        refused.text.contains("needs a read scope"),
        "{}",
        refused.text
    );
    let reader = scoped(json!(["jobs:read"])).await;
    let list = env
        .get("/api/workspaces/list", &reader)
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&list), ["other", WS]);

    // A login code works once: a session token and its cookie, then 401.
    let code = login_code(&env, "alice@example.com", 10).await;
    let res = redeem(&env, &code).await.expect(200);
    let session = res.text.clone();
    let cookie = res.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with(&format!("token={session};")), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
    let me = env
        .get("/api/users/whoami", &session)
        .await
        .expect(200)
        .json();
    assert_eq!(me["email"], json!("alice@example.com"));
    let again = redeem(&env, &code).await.expect(401);
    assert!(
        again.text.contains("used already or has expired"),
        "{}",
        again.text
    );
    let stored: i64 = env
        .sql()
        .await
        .query_one("SELECT count(*) FROM login_codes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "a redeemed code is deleted");
    // An expired code is refused (and removed), an unknown one too.
    let expired = login_code(&env, "alice@example.com", -1).await;
    for code in [expired.as_str(), "never-made"] {
        redeem(&env, code).await.expect(401);
    }
    // The code is never stored in clear.
    let row = env
        .sql()
        .await
        .query_opt(
            "SELECT 1 FROM login_codes WHERE encode(hash, 'escape') LIKE '%code-%'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.is_none());

    // Over https the cookie is Secure, and so is the one logout sends; a client's own
    // X-Forwarded-Proto, to the left of the proxy's, counts for nothing.
    let over = |proto: &'static str, code: String| {
        let env = &env;
        async move {
            let res = env
                .http
                .post(env.url("/api/auth/login_code"))
                .header("x-forwarded-proto", proto)
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
            let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
            (cookie, res.text().await.unwrap())
        }
    };
    let (cookie, _) = over("https", login_code(&env, "alice@example.com", 10).await).await;
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    let (cookie, _) = over(
        "https, http",
        login_code(&env, "alice@example.com", 10).await,
    )
    .await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    let (cookie, in_browser) = over("http", login_code(&env, "alice@example.com", 10).await).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    let res = env
        .http
        .post(env.url("/api/auth/logout"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let cleared = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.contains("Max-Age=0") && cleared.ends_with("; Secure"),
        "{cleared}"
    );
    // With a bearer token and a cookie both, logout ends the cookie's session: that is what
    // the browser logs out of. The bearer token (a session too) is left alone.
    let res = env
        .http
        .post(env.url("/api/auth/logout"))
        .bearer_auth(&session)
        .header("cookie", format!("token={in_browser}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    env.get("/api/users/whoami", &in_browser).await.expect(401);
    env.get("/api/users/whoami", &session).await.expect(200);

    // Logout ends the session presented and clears the cookie; an API token is left alone.
    let res = env
        .request(
            reqwest::Method::POST,
            "/api/auth/logout",
            Some(&session),
            None,
        )
        .await
        .expect(200);
    assert!(res.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    env.get("/api/users/whoami", &session).await.expect(401);
    env.request(
        reqwest::Method::POST,
        "/api/auth/logout",
        Some(&env.token),
        None,
    )
    .await
    .expect(200);
    env.get("/api/users/whoami", &env.token).await.expect(200);
    env.request(reqwest::Method::POST, "/api/auth/logout", None, None)
        .await
        .expect(200);
}

const SLOW: &str = "import time\n\
def main(n: int):\n    for i in range(n):\n        print(f'step {i + 1} of {n}', flush=True)\n        time.sleep(1.4)\n    return {'counted': n}\n";
const LONG: &str = "import time\n\
def main():\n    print('waiting for a cancel', flush=True)\n    time.sleep(300)\n";
const HELLO: &str = "def main(name: str = 'world'):\n    print('saying hello', flush=True)\n    return f'hello {name}'\n";

#[tokio::test]
async fn in_a_browser_runs_appear_live_are_read_canceled_and_started_from_the_form() {
    let env = TestEnv::start().await;
    env.script("u/alice/slow", "python3", SLOW).await;
    env.script("u/alice/long", "python3", LONG).await;
    env.script("u/alice/hello", "python3", HELLO).await;
    let python = |id: &str, content: &str, inputs: Value| json!({"id": id, "value": {"type": "rawscript", "language": "python3", "content": content, "input_transforms": inputs}});
    env.flow(
        "u/alice/two_steps",
        json!({"modules": [
            python("a", "def main(x):\n    return x + 1\n", json!({"x": {"type": "javascript", "expr": "flow_input.x"}})),
            python("b", "def main(y):\n    return y * 2\n", json!({"y": {"type": "javascript", "expr": "results.a"}})),
        ]}),
    )
    .await;
    let code = login_code(&env, "alice@example.com", 10).await;

    let out = browser(
        &env,
        "live",
        json!({"login_code": code, "email": "alice@example.com", "password": "pw"}),
    )
    .await;

    // What the page showed is what the API holds.
    let long = env.job(out["long"].as_str().unwrap()).await;
    assert_eq!(long["canceled"], json!(true), "{long}");
    assert_eq!(long["canceled_by"], json!("alice"));
    assert_eq!(
        long["canceled_reason"],
        json!("canceled from the Runs page")
    );
    let form = env.job(out["form"].as_str().unwrap()).await;
    assert_eq!(form["args"], json!({"name": "form"}));
    assert_eq!(form["result"], json!("hello form"));
    let flow = env.job(out["flow"].as_str().unwrap()).await;
    assert_eq!(flow["job_kind"], json!("flow"));
    assert_eq!(flow["result"], json!(10));
    let step = env.job(out["step"].as_str().unwrap()).await;
    assert_eq!(step["parent_job"], flow["id"]);
    for name in [
        "runs-1280",
        "runs-360",
        "runs-1280-dark",
        "runs-360-dark",
        "run-1280",
        "run-360",
        "run-1280-dark",
        "run-360-dark",
        "run-flow-1280",
    ] {
        let file = screenshots_dir().join(format!("{name}.png"));
        let size = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .len();
        assert!(size > 1000, "{} is {size} bytes", file.display());
    }
}

#[tokio::test]
async fn in_a_browser_a_member_sees_only_the_runs_they_may_see() {
    let env = TestEnv::start().await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    env.script("u/alice/private", "python3", "def main():\n    return 1\n")
        .await;
    let own_hash = env
        .post(
            &format!("/api/w/{WS}/scripts/create"),
            &bob,
            json!({"path": "u/bob/mine", "language": "python3", "content": "def main():\n    return 2\n"}),
        )
        .await
        .expect(201);
    assert!(!own_hash.text.is_empty());
    let other_job = env.run("u/alice/private", json!({})).await;
    let own_job = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/bob/mine"),
            &bob,
            json!({}),
        )
        .await
        .expect(201)
        .text;
    env.wait(&other_job, Duration::from_secs(60)).await;
    env.wait(&own_job, Duration::from_secs(60)).await;
    // The API agrees with what the page must show.
    let listed = env
        .get(&format!("/api/w/{WS}/jobs/list"), &bob)
        .await
        .expect(200)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    browser(
        &env,
        "permissions",
        json!({"member_token": bob, "own_job": own_job, "other_job": other_job}),
    )
    .await;
}

#[tokio::test]
async fn in_a_browser_a_list_of_1000_runs_renders_within_300_ms() {
    let env = TestEnv::with(Default::default()).await;
    // 1,000 finished runs of every kind of ending, written as the workers write them.
    env.sql()
        .await
        .execute(
            "INSERT INTO jobs (id, workspace_id, job_kind, script_path, script_hash, args,
                               created_by, permissioned_as, created_at, started_at,
                               completed_at, duration_ms, status, result, logs, language, tag,
                               attempts)
             SELECT gen_random_uuid(), $1, 'script', 'u/alice/job_' || (i % 37),
                    'abcdef0123456789', jsonb_build_object('i', i), 'alice',
                    'alice@example.com', now() - make_interval(secs => i),
                    now() - make_interval(secs => i) + interval '5 ms',
                    now() - make_interval(secs => i) + interval '1 s', 995,
                    (ARRAY['success', 'failure', 'canceled'])[1 + i % 3],
                    jsonb_build_object('n', i), 'line ' || i, 'python3', 'default', 1
             FROM generate_series(1, 1000) AS i",
            &[&WS],
        )
        .await
        .unwrap();
    let out = browser(&env, "thousand", json!({})).await;
    let mut timings: Vec<f64> = out["timings_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    timings.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("1,000 runs rendered in {timings:?} ms");
    // The best of three is the page's own cost: on a loaded CI machine a render can also
    // wait for the CPU, which says nothing about the page.
    assert!(
        timings[0] < 300.0,
        "the list of 1,000 runs took {timings:?} ms to render (over 300 ms every time)"
    );
}
