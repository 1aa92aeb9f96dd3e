//! The PostgreSQL that `millrace dev` and this harness start (src/local/postgres.rs). Jobs run
//! on the same machine as users of their own: none may get into it — no `trust` login as the
//! superuser over TCP, no way to its Unix socket or its password file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::common::{jobs_have_own_users, TestEnv};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn postgres_lets_in_only_with_the_password() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::start().await;
    let port = env.pg.port();

    // As a job would try: the superuser, no password. `trust` let this in.
    let bare = format!("postgres://postgres@127.0.0.1:{port}/millrace");
    let error = tokio_postgres::connect(&bare, NoTls)
        .await
        .err()
        .expect("logged in as postgres without a password");
    // tokio-postgres says "invalid configuration" with the cause ("password missing") inside.
    assert!(
        format!("{error:?}").contains("password missing"),
        "not refused for want of a password: {error:?}"
    );
    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{port}/millrace");
    let error = tokio_postgres::connect(&wrong, NoTls)
        .await
        .err()
        .expect("logged in as postgres with a wrong password");
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error}");

    // With the harness's URL (the password in it): in, and every rule asks for the password.
    let sql = env.sql().await;
    let methods: Vec<String> = sql
        .query("SELECT DISTINCT auth_method FROM pg_hba_file_rules", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(methods, ["scram-sha-256"]);
    let stored: String = sql
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");

    // The directory of the cluster, the password and the socket is PostgreSQL's alone.
    let dir = env.pg.data_dir();
    let postgres_uid = std::fs::metadata(dir.join("data")).unwrap().uid();
    assert_ne!(postgres_uid, 0, "the cluster belongs to root");
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    assert_eq!(std::fs::metadata(dir).unwrap().uid(), postgres_uid);
    assert_eq!(mode(&dir.join("data")), 0o700);
    assert_eq!(mode(&env.pg.password_file()), 0o600);
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists(), "no socket at {}", socket.display());
    assert_eq!(mode(&socket) & 0o077, 0, "{}", socket.display());

    // And from a job: the superuser over TCP, then over the socket, then the password file.
    let psql = std::env::var_os("PG_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
        .join("psql");
    env.script(
        "u/alice/pg_intruder",
        "bash",
        "psql=\"$1\"\nport=\"$2\"\nsock=\"$3\"\n\
         \"$psql\" -X -w -h 127.0.0.1 -p \"$port\" -U postgres -d millrace -Atc \"SELECT 'IN-AS-' || current_user\" 2>&1\n\
         \"$psql\" -X -w -h \"$sock\" -p \"$port\" -U postgres -d millrace -Atc \"SELECT 'IN-AS-' || current_user\" 2>&1\n\
         ls -la \"$sock\" 2>&1\n\
         cat \"$sock/postgres.password\" 2>&1\n\
         echo tried\n",
    )
    .await;
    let id = env
        .run(
            "u/alice/pg_intruder",
            json!({
                "psql": psql.display().to_string(),
                "port": port.to_string(),
                "sock": dir.display().to_string(),
            }),
        )
        .await;
    let done = env.wait(&id, Duration::from_secs(60)).await;
    let logs = env.job_logs(&id).await;
    assert_eq!(done["result"], json!("tried"), "{done}\n{logs}");
    assert!(!logs.contains("IN-AS-"), "the job logged in: {logs}");
    assert!(
        logs.contains("no password supplied"),
        "the job's login over TCP was not refused for want of a password: {logs}"
    );
    assert!(
        logs.contains("Permission denied"),
        "the job reached the socket directory: {logs}"
    );
    let password = std::fs::read_to_string(env.pg.password_file()).unwrap();
    assert!(
        !logs.contains(password.trim()),
        "the job read the password: {logs}"
    );
}
