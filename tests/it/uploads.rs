//! Files (SPEC §1 multipart, §7 "Object storage settings"): multipart webhooks stream their
//! files into a real S3 server (s3s-fs), scripts read and write them with Windmill's own client,
//! each workspace reaches only its own files, secrets never come back, limits hold, and a
//! 200 MiB upload leaves the API's memory flat.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::common::{
    Options, Response, TestEnv, S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, SUPERADMIN, WS,
};

const BOUNDARY: &str = "----millrace-test-boundary-7MA4YWxkTrZu0gW";

enum Part<'a> {
    Text(&'a str, &'a str),
    File {
        field: &'a str,
        filename: &'a str,
        bytes: &'a [u8],
    },
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// The head of one part: boundary line and headers.
fn part_head(name: &str, filename: Option<&str>) -> String {
    let mut head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"");
    if let Some(filename) = filename {
        head.push_str(&format!(
            "; filename=\"{filename}\"\r\nContent-Type: application/octet-stream"
        ));
    }
    head.push_str("\r\n\r\n");
    head
}

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(part_head(name, None).as_bytes());
                body.extend_from_slice(value.as_bytes());
            }
            Part::File {
                field,
                filename,
                bytes,
            } => {
                body.extend_from_slice(part_head(field, Some(filename)).as_bytes());
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_body(
    env: &TestEnv,
    path: &str,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Response {
    let res = env
        .http
        .post(env.url(path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    Response {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        text: res.text().await.unwrap(),
    }
}

fn sync_path(script: &str) -> String {
    format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/{script}")
}

fn no_500(env: &TestEnv) {
    assert!(
        !env.logs().contains("internal error"),
        "a request answered 500"
    );
}

const READ_FILES: &str = r#"import wmill

def main(files: list, title: str, note: str, **kwargs):
    return {
        "title": title,
        "note": note,
        "files": [
            {"s3": f["s3"], "filename": f["filename"],
             "text": wmill.load_s3_file(f).decode("utf-8")}
            for f in files
        ],
        "others": sorted(kwargs),
    }
"#;

/// One worker and the harness's S3 server as the instance's object storage.
async fn with_storage() -> TestEnv {
    TestEnv::with(Options {
        workers: 1,
        s3: true,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn multipart_files_reach_scripts_through_object_storage() {
    let env = with_storage().await;
    let s3 = env.s3.as_ref().unwrap();
    env.script("u/alice/files", "python3", READ_FILES).await;
    env.script(
        "u/alice/echo",
        "python3",
        "def main(**kw):\n    return kw\n",
    )
    .await;

    // Two files in one field, a third in another, and text fields.
    let body = multipart(&[
        Part::Text("title", "Report ✓"),
        Part::File {
            field: "files",
            filename: "a.txt",
            bytes: "hello ünïcode\n".as_bytes(),
        },
        Part::File {
            field: "files",
            filename: "b.csv",
            bytes: b"x,y\r\n1,2\r\n",
        },
        Part::Text("note", "two\r\nlines"),
        Part::File {
            field: "single",
            filename: "one.bin",
            bytes: &[0, 1, 2, 255],
        },
    ]);
    let res = post_body(&env, &sync_path("files"), &env.token, &content_type(), body)
        .await
        .expect(200);
    let job = res.headers["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        res.json(),
        json!({
            "title": "Report ✓",
            "note": "two\r\nlines",
            "files": [
                {"s3": format!("webhook_uploads/{job}/files/a.txt"), "filename": "a.txt",
                 "text": "hello ünïcode\n"},
                {"s3": format!("webhook_uploads/{job}/files/b.csv"), "filename": "b.csv",
                 "text": "x,y\r\n1,2\r\n"},
            ],
            "others": ["single"],
        })
    );
    // The job's arguments carry the S3 objects, and the bytes are in the bucket, under the
    // workspace's prefix (the instance default is shared by every workspace).
    let args = env.job(&job).await["args"].clone();
    assert_eq!(
        args["single"],
        json!([{"s3": format!("webhook_uploads/{job}/single/one.bin"), "filename": "one.bin"}])
    );
    let stored = s3.object_path(&format!("{WS}/webhook_uploads/{job}/single/one.bin"));
    assert_eq!(std::fs::read(stored).unwrap(), vec![0, 1, 2, 255]);

    // Async route, a preset id, a filename that tries to climb out, and a repeated name.
    let id = uuid::Uuid::new_v4();
    let body = multipart(&[
        Part::File {
            field: "../up",
            filename: "../../../escape.txt",
            bytes: b"contained",
        },
        Part::File {
            field: "dup",
            filename: "same.txt",
            bytes: b"first",
        },
        Part::File {
            field: "dup",
            filename: "dir/same.txt",
            bytes: b"second",
        },
        Part::File {
            field: "dots",
            filename: "..",
            bytes: b"dots",
        },
    ]);
    let res = post_body(
        &env,
        &format!("/api/w/{WS}/jobs/run/p/u/alice/echo?job_id={id}"),
        &env.token,
        &content_type(),
        body.clone(),
    )
    .await
    .expect(201);
    assert_eq!(res.text, id.to_string());
    let done = env.wait(&res.text, Duration::from_secs(30)).await;
    assert_eq!(
        done["result"],
        json!({
            // The argument keeps the field's name; the key has only safe segments.
            "../up": [{"s3": format!("webhook_uploads/{id}/up/escape.txt"), "filename": "escape.txt"}],
            "dup": [
                {"s3": format!("webhook_uploads/{id}/dup/same.txt"), "filename": "same.txt"},
                {"s3": format!("webhook_uploads/{id}/dup/same-1.txt"), "filename": "same.txt"},
            ],
            "dots": [{"s3": format!("webhook_uploads/{id}/dots/file"), "filename": "file"}],
        })
    );
    let escaped = s3.object_path(&format!("{WS}/webhook_uploads/{id}/up/escape.txt"));
    assert_eq!(std::fs::read_to_string(escaped).unwrap(), "contained");
    assert!(!s3.root.join("escape.txt").exists());
    assert!(!s3.root.join(S3_BUCKET).join("escape.txt").exists());
    // The same preset id again: 409 before anything is overwritten.
    post_body(
        &env,
        &format!("/api/w/{WS}/jobs/run/p/u/alice/echo?job_id={id}"),
        &env.token,
        &content_type(),
        multipart(&[Part::File {
            field: "dup",
            filename: "same.txt",
            bytes: b"overwritten?",
        }]),
    )
    .await
    .expect(409);
    let first = s3.object_path(&format!("{WS}/webhook_uploads/{id}/dup/same.txt"));
    assert_eq!(std::fs::read_to_string(first).unwrap(), "first");

    // A webhook-specific token can post files, and its job's script reads them; the token
    // itself cannot read the workspace's files.
    let hook = env
        .post(
            "/api/users/tokens/create",
            &env.token,
            json!({"scopes": ["jobs:run:scripts:u/alice/files"]}),
        )
        .await
        .expect(201)
        .text;
    let body = multipart(&[
        Part::Text("title", "hook"),
        Part::Text("note", ""),
        Part::File {
            field: "files",
            filename: "h.txt",
            bytes: b"via hook",
        },
    ]);
    let res = post_body(&env, &sync_path("files"), &hook, &content_type(), body)
        .await
        .expect(200);
    assert_eq!(res.json()["files"][0]["text"], json!("via hook"));
    let key = res.json()["files"][0]["s3"].as_str().unwrap().to_owned();
    env.get(
        &format!("/api/w/{WS}/job_helpers/download_s3_file?file_key={key}"),
        &hook,
    )
    .await
    .expect(403);
    no_500(&env);
}

const WRITE_FILES: &str = r#"import wmill
from wmill import S3Object

def main():
    named = wmill.write_s3_file(S3Object(s3="reports/out.txt"), "written by a script ✓".encode())
    auto = wmill.write_s3_file(None, b"\x00\x01binary")
    back = wmill.load_s3_file(named).decode("utf-8")
    wmill.write_s3_file(S3Object(s3="tmp/gone.txt"), b"x")
    wmill.delete_s3_object(S3Object(s3="tmp/gone.txt"))
    return {"named": named["s3"], "auto": auto["s3"], "back": back,
            "auto_bytes": list(wmill.load_s3_file(auto))}
"#;

const OTHER_WORKSPACE: &str = r#"import os, urllib.request, urllib.error

def main():
    base = os.environ["BASE_INTERNAL_URL"]
    seen = {}
    for ws in ["test", "other"]:
        req = urllib.request.Request(
            f"{base}/api/w/{ws}/job_helpers/download_s3_file?file_key=shared.txt",
            headers={"Authorization": "Bearer " + os.environ["WM_TOKEN"]},
        )
        try:
            with urllib.request.urlopen(req) as r:
                seen[ws] = [r.status, r.read().decode()]
        except urllib.error.HTTPError as e:
            seen[ws] = [e.code, ""]
    return seen
"#;

#[tokio::test]
async fn scripts_write_files_that_clients_download_in_their_workspace_only() {
    let env = with_storage().await;
    env.script("u/alice/write", "python3", WRITE_FILES).await;
    let res = env
        .post(&sync_path("write"), &env.token, json!({}))
        .await
        .expect(200);
    let out = res.json();
    assert_eq!(out["named"], json!("reports/out.txt"));
    assert_eq!(out["back"], json!("written by a script ✓"));
    assert!(out["auto"]
        .as_str()
        .unwrap()
        .starts_with("windmill_uploads/"));
    assert_eq!(out["auto_bytes"], json!([0, 1, 98, 105, 110, 97, 114, 121]));

    // Downloaded by a client, byte for byte; the deleted file is gone.
    let download = |key: String| {
        let req = env
            .http
            .get(env.url(&format!("/api/w/{WS}/job_helpers/download_s3_file")))
            .query(&[("file_key", key)])
            .bearer_auth(&env.token);
        async move { req.send().await.unwrap() }
    };
    let res = download("reports/out.txt".into()).await;
    assert_eq!(res.status(), 200);
    let expected = "written by a script ✓";
    assert_eq!(
        res.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    assert_eq!(res.text().await.unwrap(), expected);
    assert_eq!(download("/reports/out.txt".into()).await.status(), 200);
    assert_eq!(download("tmp/gone.txt".into()).await.status(), 404);
    for bad in ["../x", "a//b", "", "a/./b"] {
        assert_eq!(download(bad.into()).await.status(), 400, "{bad:?}");
    }
    let res = env
        .get(
            &format!("/api/w/{WS}/job_helpers/download_s3_file?file_key=a&storage=elsewhere"),
            &env.token,
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text);

    // Upload and delete from a client too.
    let res = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/job_helpers/upload_s3_file?file_key=shared.txt"
        )))
        .bearer_auth(&env.token)
        .header("content-type", "application/octet-stream")
        .body("in test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"file_key": "shared.txt"})
    );
    // A content type the store could not take as a header is the caller's mistake.
    let res = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/job_helpers/upload_s3_file?file_key=ct.txt&content_type=%C3%97%06"
        )))
        .bearer_auth(&env.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("media type"));

    // A second workspace with a file of the same name: each workspace sees its own.
    env.post(
        "/api/workspaces/create",
        SUPERADMIN,
        json!({"id": "other", "name": "Other"}),
    )
    .await
    .expect(201);
    env.post(
        "/api/w/other/workspaces/add_user",
        SUPERADMIN,
        json!({"email": "alice@example.com", "username": "alice", "is_admin": true}),
    )
    .await
    .expect(201);
    env.http
        .post(env.url("/api/w/other/job_helpers/upload_s3_file?file_key=shared.txt"))
        .bearer_auth(&env.token)
        .body("in other")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let mine = download("shared.txt".into()).await.text().await.unwrap();
    assert_eq!(mine, "in test");

    // A script's token reaches its own workspace's storage and no other.
    env.script("u/alice/peek", "python3", OTHER_WORKSPACE).await;
    let res = env
        .post(&sync_path("peek"), &env.token, json!({}))
        .await
        .expect(200);
    assert_eq!(
        res.json(),
        json!({"test": [200, "in test"], "other": [403, ""]})
    );
    let res = env
        .request(
            reqwest::Method::DELETE,
            &format!("/api/w/{WS}/job_helpers/delete_s3_file?file_key=shared.txt"),
            Some(&env.token),
            None,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(download("shared.txt".into()).await.status(), 404);
    no_500(&env);
}

#[tokio::test]
async fn object_storage_settings_never_show_the_secret() {
    // The workspace's own bucket is on the harness's s3s-fs, on loopback: allowed explicitly.
    let env = TestEnv::with(Options {
        workers: 1,
        s3: true,
        api_env: vec![("OBJECT_STORAGE_ALLOWED_HOSTS".into(), "127.0.0.1".into())],
        ..Default::default()
    })
    .await;
    let s3 = env.s3.as_ref().unwrap();
    let settings = format!("/api/w/{WS}/workspaces/object_storage");
    let res = env.get(&settings, &env.token).await.expect(200);
    assert_eq!(
        res.json(),
        json!({"configured": true, "source": "instance", "endpoint": s3.endpoint,
               "bucket": S3_BUCKET, "region": "us-east-1", "access_key": null,
               "secret_key_set": true})
    );
    assert!(!res.text.contains(S3_SECRET_KEY));

    // Workspace admins only.
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    env.get(&settings, &bob).await.expect(403);
    env.post(&settings, &bob, json!({})).await.expect(403);

    // The workspace's own bucket.
    std::fs::create_dir_all(s3.root.join("own")).unwrap();
    let own_secret = "own-workspace-secret-key-42";
    let res = env
        .post(
            &settings,
            &env.token,
            json!({"endpoint": s3.endpoint, "bucket": "own", "access_key": S3_ACCESS_KEY,
                   "secret_key": own_secret}),
        )
        .await;
    // Settings are stored as given (the store is not called); s3s-fs knows one key pair, set next.
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.json(),
        json!({"configured": true, "source": "workspace", "endpoint": s3.endpoint,
               "bucket": "own", "region": null, "access_key": S3_ACCESS_KEY,
               "secret_key_set": true})
    );
    assert!(!res.text.contains(own_secret));
    let res = env
        .post(
            &settings,
            &env.token,
            json!({"endpoint": s3.endpoint, "bucket": "own", "region": "us-east-1",
                   "access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY}),
        )
        .await
        .expect(200);
    assert!(!res.text.contains(S3_SECRET_KEY));
    // Left out, the stored secret is kept.
    let res = env
        .post(
            &settings,
            &env.token,
            json!({"endpoint": s3.endpoint, "bucket": "own", "region": "us-east-1",
                   "access_key": S3_ACCESS_KEY}),
        )
        .await
        .expect(200);
    assert_eq!(res.json()["secret_key_set"], json!(true));
    let get = env.get(&settings, &env.token).await.expect(200);
    assert_eq!(get.json()["source"], json!("workspace"));
    assert!(get.json().get("secret_key").is_none());
    for bad in [
        json!({"endpoint": "ftp://host", "bucket": "own", "access_key": "k", "secret_key": "s"}),
        json!({"endpoint": s3.endpoint, "bucket": "Not A Bucket!", "access_key": "k", "secret_key": "s"}),
        json!({"endpoint": s3.endpoint, "bucket": "own", "access_key": "", "secret_key": "s"}),
        json!({"bucket": "own"}),
    ] {
        let res = env.post(&settings, &env.token, bad.clone()).await;
        assert_eq!(res.status, 400, "{bad}: {}", res.text);
    }

    // Uploads now land in the workspace's own bucket, at its root.
    env.script(
        "u/alice/echo",
        "python3",
        "def main(**kw):\n    return kw\n",
    )
    .await;
    let res = post_body(
        &env,
        &sync_path("echo"),
        &env.token,
        &content_type(),
        multipart(&[Part::File {
            field: "f",
            filename: "x.txt",
            bytes: b"own bucket",
        }]),
    )
    .await
    .expect(200);
    let key = res.json()["f"][0]["s3"].as_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(s3.root.join("own").join(&key)).unwrap(),
        "own bucket"
    );
    let job = res.headers["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let job_json = env.job(&job).await.to_string();
    let logs = env.logs();
    for secret in [S3_SECRET_KEY, own_secret] {
        assert!(!job_json.contains(secret));
        assert!(!logs.contains(secret), "a log shows a secret key");
    }
    no_500(&env);
}

#[tokio::test]
async fn uploads_without_object_storage_are_refused() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/echo",
        "python3",
        "def main(**kw):\n    return kw\n",
    )
    .await;
    // Text fields only need no storage.
    let body = multipart(&[Part::Text("a", "1"), Part::Text("b", "ünï ✓")]);
    let res = post_body(&env, &sync_path("echo"), &env.token, &content_type(), body)
        .await
        .expect(200);
    assert_eq!(res.json(), json!({"a": "1", "b": "ünï ✓"}));
    // Query and header args win over fields; wrap_body wraps them.
    let body = multipart(&[Part::Text("a", "1"), Part::Text("x_sign", "field")]);
    let res = env
        .http
        .post(env.url(&format!(
            "{}?include_query=a&a=query&include_header=X-Sign",
            sync_path("echo")
        )))
        .bearer_auth(&env.token)
        .header("content-type", content_type())
        .header("x-sign", "header")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"a": "query", "x_sign": "header"})
    );
    let res = post_body(
        &env,
        &format!("{}?wrap_body=true", sync_path("echo")),
        &env.token,
        &content_type(),
        body,
    )
    .await
    .expect(200);
    assert_eq!(res.json(), json!({"body": {"a": "1", "x_sign": "field"}}));
    // An empty file input (a browser's "no file chosen") needs none either.
    let body = multipart(&[
        Part::Text("a", "1"),
        Part::File {
            field: "f",
            filename: "",
            bytes: b"",
        },
    ]);
    let res = post_body(&env, &sync_path("echo"), &env.token, &content_type(), body)
        .await
        .expect(200);
    assert_eq!(res.json(), json!({"a": "1"}));
    // A file: 400 saying why, on every run route.
    let body = multipart(&[Part::File {
        field: "f",
        filename: "x.txt",
        bytes: b"x",
    }]);
    for path in [
        sync_path("echo"),
        format!("/api/w/{WS}/jobs/run/p/u/alice/echo"),
        format!("/api/w/{WS}/jobs/run_and_stream/p/u/alice/echo"),
    ] {
        let res = post_body(&env, &path, &env.token, &content_type(), body.clone()).await;
        assert_eq!(res.status, 400, "{path}: {}", res.text);
        assert!(
            res.text.contains("no object storage is configured"),
            "{}",
            res.text
        );
    }
    let res = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/job_helpers/upload_s3_file?file_key=a.txt"
        )))
        .bearer_auth(&env.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = env
        .get(
            &format!("/api/w/{WS}/workspaces/object_storage"),
            &env.token,
        )
        .await
        .expect(200);
    assert_eq!(res.json()["configured"], json!(false));
    malformed_multipart_is_400(&env).await;
    no_500(&env);
}

/// Truncated bodies, a missing boundary, a part without a name, bad UTF-8 in a text field.
async fn malformed_multipart_is_400(env: &TestEnv) {
    let whole = multipart(&[
        Part::Text("a", "1"),
        Part::File {
            field: "f",
            filename: "x.txt",
            bytes: b"x",
        },
    ]);
    let truncated = whole[..whole.len() - 20].to_vec();
    let nameless =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n");
    let mut bad_utf8 = part_head("a", None).into_bytes();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, b'\r', b'\n']);
    bad_utf8.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let cases: Vec<(String, Vec<u8>)> = vec![
        (content_type(), truncated),
        (content_type(), b"this is not multipart at all".to_vec()),
        ("multipart/form-data".into(), whole.clone()),
        (content_type(), nameless.into_bytes()),
        (content_type(), bad_utf8),
    ];
    for (ct, body) in cases {
        let res = post_body(env, &sync_path("echo"), &env.token, &ct, body).await;
        assert_eq!(res.status, 400, "{}", res.text);
        assert!(res.text.starts_with("Bad request: "), "{}", res.text);
    }
}

#[tokio::test]
async fn size_limits_split_between_fields_and_files() {
    let env = TestEnv::with(Options {
        workers: 1,
        s3: true,
        api_env: vec![
            ("MAX_BODY_SIZE".into(), "4096".into()),
            ("MAX_UPLOAD_SIZE".into(), (1024 * 1024).to_string()),
        ],
        ..Default::default()
    })
    .await;
    env.script(
        "u/alice/echo",
        "python3",
        "def main(**kw):\n    return kw\n",
    )
    .await;
    // A file far above MAX_BODY_SIZE but within MAX_UPLOAD_SIZE is fine.
    let big_ok = vec![b'a'; 100 * 1024];
    let body = multipart(&[Part::File {
        field: "f",
        filename: "ok.bin",
        bytes: &big_ok,
    }]);
    post_body(&env, &sync_path("echo"), &env.token, &content_type(), body)
        .await
        .expect(200);
    // Files above MAX_UPLOAD_SIZE, together or alone: 413.
    let half = vec![b'b'; 600 * 1024];
    let body = multipart(&[
        Part::File {
            field: "f",
            filename: "1.bin",
            bytes: &half,
        },
        Part::File {
            field: "f",
            filename: "2.bin",
            bytes: &half,
        },
    ]);
    let res = post_body(&env, &sync_path("echo"), &env.token, &content_type(), body).await;
    assert_eq!(res.status, 413, "{}", res.text);
    let res = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/job_helpers/upload_s3_file?file_key=big.bin"
        )))
        .bearer_auth(&env.token)
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // Text fields count toward MAX_BODY_SIZE, like any other body.
    let text = "t".repeat(5000);
    let body = multipart(&[Part::Text("t", &text)]);
    let res = post_body(&env, &sync_path("echo"), &env.token, &content_type(), body).await;
    assert_eq!(res.status, 413, "{}", res.text);
    let res = post_body(
        &env,
        &sync_path("echo"),
        &env.token,
        "application/json",
        json!({"t": text}).to_string(),
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.text);
    malformed_multipart_is_400(&env).await;
    no_500(&env);
}

/// Resident and peak memory of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    * 1024
            })
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A multipart body with one file of `size` bytes, made as it is sent (never whole in memory).
fn streamed_upload(size: u64) -> reqwest::Body {
    const CHUNK: usize = 256 * 1024;
    let head = Bytes::from(part_head("big", Some("big.bin")));
    let tail = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let full_chunks = size / CHUNK as u64;
    let rest = (size % CHUNK as u64) as usize;
    let body = futures::stream::iter(
        std::iter::once(head)
            .chain((0..full_chunks).map(move |_| chunk.clone()))
            .chain(std::iter::once(Bytes::from(vec![7u8; rest])))
            .chain(std::iter::once(tail))
            .map(Ok::<_, std::io::Error>),
    );
    reqwest::Body::wrap_stream(body)
}

#[tokio::test]
async fn a_200_mib_upload_keeps_the_api_memory_flat() {
    let env = with_storage().await;
    let s3 = env.s3.as_ref().unwrap();
    env.script(
        "u/alice/size",
        "python3",
        "def main(big):\n    return big\n",
    )
    .await;
    let run = format!("/api/w/{WS}/jobs/run/p/u/alice/size");
    // Warm up (S3 client, connection pools) with a small file first.
    post_body(
        &env,
        &run,
        &env.token,
        &content_type(),
        streamed_upload(1024),
    )
    .await
    .expect(201);
    let pid = env.api_pid();
    let (before, _) = memory_of(pid);

    let size: u64 = 200 * 1024 * 1024;
    let started = Instant::now();
    let multipart_type = content_type();
    let upload = post_body(
        &env,
        &run,
        &env.token,
        &multipart_type,
        streamed_upload(size),
    );
    tokio::pin!(upload);
    let mut peak = before;
    let res = loop {
        tokio::select! {
            res = &mut upload => break res,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                peak = peak.max(memory_of(pid).0);
            }
        }
    };
    let res = res.expect(201);
    let (after, high_water) = memory_of(pid);
    // The kernel's high-water mark catches a peak between two samples.
    let growth = peak.max(after).max(high_water).saturating_sub(before);
    eprintln!(
        "200 MiB upload in {:?}: API RSS before {} MiB, sampled peak {} MiB, \
         high-water mark {} MiB, growth {} MiB",
        started.elapsed(),
        before >> 20,
        peak >> 20,
        high_water >> 20,
        growth >> 20
    );
    assert!(
        growth < 64 * 1024 * 1024,
        "the API grew by {} MiB while streaming 200 MiB",
        growth >> 20
    );
    let done = env.wait(&res.text, Duration::from_secs(60)).await;
    let key = done["result"][0]["s3"].as_str().unwrap().to_owned();
    assert_eq!(key, format!("webhook_uploads/{}/big/big.bin", res.text));
    let stored = s3.object_path(&format!("{WS}/{key}"));
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), size);
    let mut head = vec![0u8; 1024];
    std::io::Read::read_exact(&mut std::fs::File::open(&stored).unwrap(), &mut head).unwrap();
    assert!(head.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    no_500(&env);
}
