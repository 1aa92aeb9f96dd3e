//! No SSRF through object storage settings (issue 12, requirement 7): a workspace's own
//! endpoint may not be a loopback, link-local, private or other internal address unless
//! `OBJECT_STORAGE_ALLOWED_HOSTS` lists it — checked when saved and again when used, on the
//! resolved address — and what the endpoint answers with a redirect is never fetched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{LocalS3, Options, TestEnv, S3_ACCESS_KEY, S3_SECRET_KEY, WS};

fn settings_path() -> String {
    format!("/api/w/{WS}/workspaces/object_storage")
}

fn settings(endpoint: &str, bucket: &str) -> Value {
    json!({"endpoint": endpoint, "bucket": bucket, "access_key": S3_ACCESS_KEY,
           "secret_key": S3_SECRET_KEY})
}

fn no_500(env: &TestEnv) {
    assert!(
        !env.logs().contains("internal error"),
        "a request answered 500"
    );
}

/// A minimal HTTP server on 127.0.0.1 that answers every request with one fixed response and
/// counts the requests it got.
struct Stub {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl Stub {
    async fn start(response: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let response = response.clone();
                let counter = counter.clone();
                tokio::spawn(async move { serve(stream, &response, &counter).await });
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one whole request (head and `Content-Length` body, so that the client is not cut off
/// while it sends) and answers.
async fn serve(mut stream: TcpStream, response: &str, requests: &AtomicUsize) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = received.len() - head_end;
    while body < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body += n,
        }
    }
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

const METADATA: &str = "instance-metadata-credentials";

/// What a cloud metadata service would answer.
fn metadata_response() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{METADATA}",
        METADATA.len()
    )
}

async fn download(env: &TestEnv, key: &str) -> reqwest::Response {
    env.http
        .get(env.url(&format!(
            "/api/w/{WS}/job_helpers/download_s3_file?file_key={key}"
        )))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap()
}

async fn upload(env: &TestEnv, key: &str, body: Vec<u8>) -> (u16, String) {
    let res = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/job_helpers/upload_s3_file?file_key={key}"
        )))
        .bearer_auth(&env.token)
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn delete(env: &TestEnv, key: &str) -> (u16, String) {
    let res = env
        .request(
            reqwest::Method::DELETE,
            &format!("/api/w/{WS}/job_helpers/delete_s3_file?file_key={key}"),
            Some(&env.token),
            None,
        )
        .await;
    (res.status, res.text)
}

#[tokio::test]
async fn internal_endpoints_are_refused_when_saved() {
    let env = TestEnv::with(Options::default()).await;
    for (endpoint, address, kind) in [
        ("http://169.254.169.254", "169.254.169.254", "link-local"),
        ("http://127.0.0.1:9000", "127.0.0.1", "loopback"),
        ("http://10.0.0.1", "10.0.0.1", "private"),
        ("http://172.16.0.1:9000", "172.16.0.1", "private"),
        ("https://192.168.1.1", "192.168.1.1", "private"),
        ("http://[::1]:9000", "::1", "loopback"),
        ("http://[fe80::1]", "fe80::1", "link-local"),
        ("http://[fd00:ec2::254]", "fd00:ec2::254", "unique local"),
        ("http://[::ffff:a9fe:a9fe]", "169.254.169.254", "link-local"),
        ("http://100.64.0.1", "100.64.0.1", "carrier-grade NAT"),
        ("http://0.0.0.0:9000", "0.0.0.0", "unspecified"),
        // Other spellings of 127.0.0.1 that resolvers accept.
        ("http://2130706433:9000", "127.0.0.1", "loopback"),
        ("http://0x7f.1:9000", "127.0.0.1", "loopback"),
        ("http://localhost:9000", "localhost resolves to", "loopback"),
    ] {
        let res = env
            .post(&settings_path(), &env.token, settings(endpoint, "own"))
            .await;
        assert_eq!(res.status, 400, "{endpoint}: {}", res.text);
        for expected in [
            "Bad request: ",
            address,
            kind,
            "not a public address",
            "OBJECT_STORAGE_ALLOWED_HOSTS",
        ] {
            assert!(res.text.contains(expected), "{endpoint}: {}", res.text);
        }
        assert!(!res.text.contains(S3_SECRET_KEY));
    }
    // Nothing was saved.
    let res = env.get(&settings_path(), &env.token).await.expect(200);
    assert_eq!(res.json()["configured"], json!(false));
    no_500(&env);
}

#[tokio::test]
async fn listed_hosts_let_a_workspace_use_an_internal_store() {
    let root = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(root.path().to_owned()).await;
    std::fs::create_dir_all(root.path().join("own")).unwrap();
    let port = s3.endpoint.rsplit(':').next().unwrap().to_owned();
    let env = TestEnv::with(Options {
        api_env: vec![(
            "OBJECT_STORAGE_ALLOWED_HOSTS".into(),
            format!("minio.internal, 127.0.0.1:{port}"),
        )],
        ..Default::default()
    })
    .await;

    // The entry names one port: another one on the same address is still refused.
    let other = Stub::start(metadata_response()).await;
    let res = env
        .post(
            &settings_path(),
            &env.token,
            settings(&format!("http://127.0.0.1:{}", other.port), "own"),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text);
    assert!(res.text.contains("loopback"), "{}", res.text);
    env.post(&settings_path(), &env.token, settings(&s3.endpoint, "own"))
        .await
        .expect(200);

    // Larger than one S3 part: a multipart upload, part after part.
    let big: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (status, text) = upload(&env, "big.bin", big.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"file_key": "big.bin"})
    );
    assert!(std::fs::read(root.path().join("own/big.bin")).unwrap() == big);
    let res = download(&env, "big.bin").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(big.len() as u64));
    assert!(res.bytes().await.unwrap() == big);

    // A multipart webhook stores its file there too.
    env.script(
        "u/alice/echo",
        "python3",
        "def main(**kw):\n    return kw\n",
    )
    .await;
    let job = env.upload_text("u/alice/echo", "through the guard").await;
    let key = format!("webhook_uploads/{job}/f/x.txt");
    assert_eq!(
        std::fs::read_to_string(root.path().join("own").join(&key)).unwrap(),
        "through the guard"
    );
    let res = download(&env, &key).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "through the guard");

    let (status, text) = delete(&env, "big.bin").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(download(&env, "big.bin").await.status(), 404);
    assert_eq!(other.requests(), 0);
    no_500(&env);
}

#[tokio::test]
async fn redirects_from_the_object_storage_are_not_followed() {
    let metadata = Stub::start(metadata_response()).await;
    // Every port of 127.0.0.1 is allowed, the metadata stub's too: only not following the
    // redirect keeps it from being asked.
    let env = TestEnv::with(Options {
        api_env: vec![("OBJECT_STORAGE_ALLOWED_HOSTS".into(), "127.0.0.1".into())],
        ..Default::default()
    })
    .await;
    let location = format!("http://127.0.0.1:{}/latest/meta-data/", metadata.port);
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "303 See Other",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let redirector = Stub::start(format!(
            "HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        ))
        .await;
        env.post(
            &settings_path(),
            &env.token,
            settings(&format!("http://127.0.0.1:{}", redirector.port), "own"),
        )
        .await
        .expect(200);

        let res = download(&env, "latest").await;
        let code = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(code, 400, "{status}: {text}");
        assert!(text.contains("redirect"), "{status}: {text}");
        assert!(!text.contains(METADATA), "{status}: {text}");
        let (code, text) = upload(&env, "latest", b"x".to_vec()).await;
        assert_eq!(code, 400, "{status}: {text}");
        assert!(text.contains("redirect"), "{status}: {text}");
        let (code, text) = delete(&env, "latest").await;
        assert_eq!(code, 400, "{status}: {text}");
        assert!(
            redirector.requests() >= 3,
            "{status}: the store was not asked"
        );
    }
    assert_eq!(metadata.requests(), 0, "a redirect was followed");
    no_500(&env);
}

#[tokio::test]
async fn an_endpoint_that_became_internal_is_refused_when_used() {
    let internal = Stub::start(metadata_response()).await;
    let env = TestEnv::with(Options::default()).await;
    // As saved before the rule existed (or a name that now resolves elsewhere): the check on
    // use refuses it all the same.
    let (db, connection) = tokio_postgres::connect(&env.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.execute(
        "INSERT INTO workspace_object_storage
             (workspace_id, endpoint, bucket, access_key, secret_key, updated_by)
         VALUES ($1, $2, 'own', $3, $4, 'alice')",
        &[
            &WS,
            &format!("http://127.0.0.1:{}", internal.port),
            &S3_ACCESS_KEY,
            &S3_SECRET_KEY,
        ],
    )
    .await
    .unwrap();

    let res = download(&env, "latest").await;
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    for expected in ["127.0.0.1", "loopback", "OBJECT_STORAGE_ALLOWED_HOSTS"] {
        assert!(text.contains(expected), "{text}");
    }
    let (code, text) = upload(&env, "x", b"x".to_vec()).await;
    assert_eq!(code, 400, "{text}");
    assert!(!text.contains(S3_SECRET_KEY));
    assert_eq!(internal.requests(), 0);
    assert!(
        !env.logs().contains(S3_SECRET_KEY),
        "a log shows the secret key"
    );
    no_500(&env);
}
