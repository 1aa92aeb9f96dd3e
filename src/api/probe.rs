//! `HEAD` on a webhook URL: webhook providers probe URLs before they save them. The answer is
//! 200 with no token and no job — and it must be explicit, because axum would otherwise answer
//! `HEAD` with the `GET` handler and so run the sync and SSE routes' scripts.

use axum::http::StatusCode;

macro_rules! probe {
    ($name:ident, $path:literal, $target:literal) => {
        #[utoipa::path(head, path = $path, tag = "run",
            params(("workspace" = String, Path), ($target = String, Path)),
            responses((status = 200, description = "the webhook URL exists; nothing is run")))]
        pub async fn $name() -> StatusCode {
            StatusCode::OK
        }
    };
}

probe!(run_by_path, "/api/w/{workspace}/jobs/run/p/{*path}", "path");
probe!(run_by_hash, "/api/w/{workspace}/jobs/run/h/{hash}", "hash");
probe!(
    wait_by_path,
    "/api/w/{workspace}/jobs/run_wait_result/p/{*path}",
    "path"
);
probe!(
    wait_by_hash,
    "/api/w/{workspace}/jobs/run_wait_result/h/{hash}",
    "hash"
);
probe!(
    stream_by_path,
    "/api/w/{workspace}/jobs/run_and_stream/p/{*path}",
    "path"
);
probe!(
    stream_by_hash,
    "/api/w/{workspace}/jobs/run_and_stream/h/{hash}",
    "hash"
);
probe!(
    run_flow_by_path,
    "/api/w/{workspace}/jobs/run/f/{*path}",
    "path"
);
probe!(
    run_flow_by_version,
    "/api/w/{workspace}/jobs/run/fv/{version}",
    "version"
);
probe!(
    wait_flow_by_path,
    "/api/w/{workspace}/jobs/run_wait_result/f/{*path}",
    "path"
);
probe!(
    wait_flow_by_version,
    "/api/w/{workspace}/jobs/run_wait_result/fv/{version}",
    "version"
);
probe!(
    stream_flow_by_path,
    "/api/w/{workspace}/jobs/run_and_stream/f/{*path}",
    "path"
);
probe!(
    stream_flow_by_version,
    "/api/w/{workspace}/jobs/run_and_stream/fv/{version}",
    "version"
);
