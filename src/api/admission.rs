//! Load shedding on the run routes: at most `MAX_INFLIGHT_REQUESTS` requests and
//! `MAX_INFLIGHT_BODY_BYTES` of their bodies are worked on at once. One more is answered 503
//! with `Retry-After` at once instead of waiting in memory, which would only make every caller
//! slower and the process bigger until it is killed.
//!
//! A request holds its share from before its body is read until its job is queued (or refused):
//! `submit` gives it back, so a sync or SSE call waiting for its job's result costs no budget.

use std::cell::RefCell;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::AppState;

/// Seconds a caller refused here waits: requests in flight end within a second or so.
const RETRY_AFTER: u64 = 1;

pub struct Admission {
    requests: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
    body_budget: usize,
}

/// One admitted request's share, given back when dropped.
struct Ticket {
    _request: OwnedSemaphorePermit,
    _body: OwnedSemaphorePermit,
}

tokio::task_local! {
    // The handler runs in the middleware's task: `submit`, deep in it, ends the share without
    // every run route passing it along.
    static TICKET: RefCell<Option<Ticket>>;
}

impl Admission {
    pub fn new(requests: usize, body_bytes: usize) -> Self {
        let body_budget = body_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            requests: Arc::new(Semaphore::new(requests.min(Semaphore::MAX_PERMITS))),
            body_bytes: Arc::new(Semaphore::new(body_budget)),
            body_budget,
        }
    }

    fn admit(&self, method: &Method, headers: &HeaderMap, max_body: usize) -> Option<Ticket> {
        let request = self.requests.clone().try_acquire_owned().ok()?;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // A body without a length may grow to the limit; a longer one is refused with 413.
        let reserved = match *method {
            Method::GET | Method::HEAD => 0,
            _ => declared.unwrap_or(max_body).min(max_body),
        }
        .min(self.body_budget);
        let reserved = u32::try_from(reserved).unwrap_or(u32::MAX);
        let body = self
            .body_bytes
            .clone()
            .try_acquire_many_owned(reserved)
            .ok()?;
        Some(Ticket {
            _request: request,
            _body: body,
        })
    }
}

/// The routes that take a job's body and submit it.
fn is_run_route(path: &str) -> bool {
    [
        "/jobs/run/",
        "/jobs/run_wait_result/",
        "/jobs/run_and_stream/",
    ]
    .iter()
    .any(|route| path.starts_with(&format!("/api/w/{{workspace}}{route}")))
        || path.starts_with("/api/w/{workspace}/hooks/")
}

/// The middleware: admits a run request or answers 503 at once.
pub async fn limit(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    if !matched.is_some_and(|m| is_run_route(m.as_str())) {
        return next.run(req).await;
    }
    let max_body = state.config().max_body_size;
    let Some(ticket) = state
        .admission()
        .admit(req.method(), req.headers(), max_body)
    else {
        return ApiError::Overloaded("too many requests in progress", RETRY_AFTER).into_response();
    };
    TICKET
        .scope(RefCell::new(Some(ticket)), next.run(req))
        .await
}

/// The current request's job is queued or refused: its body is gone, its share goes back.
pub fn release() {
    let _ = TICKET.try_with(|ticket| ticket.borrow_mut().take());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_routes_are_recognised() {
        for path in [
            "/api/w/{workspace}/jobs/run/p/{*path}",
            "/api/w/{workspace}/jobs/run/fv/{version}",
            "/api/w/{workspace}/jobs/run_wait_result/h/{hash}",
            "/api/w/{workspace}/jobs/run_and_stream/f/{*path}",
            "/api/w/{workspace}/hooks/{*path}",
        ] {
            assert!(is_run_route(path), "{path}");
        }
        for path in [
            "/api/w/{workspace}/jobs_u/get/{id}",
            "/api/w/{workspace}/jobs/list",
        ] {
            assert!(!is_run_route(path), "{path}");
        }
    }

    #[test]
    fn shares_are_bounded_and_given_back() {
        let admission = Admission::new(2, 100);
        let post = |len: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, len.parse().unwrap());
            admission.admit(&Method::POST, &headers, 80)
        };
        let first = post("60").expect("room");
        assert!(post("60").is_none(), "over the body budget");
        let second = post("40").expect("room");
        assert!(post("0").is_none(), "over the request count");
        drop(first);
        // No length: the whole MAX_BODY_SIZE is reserved.
        assert!(admission
            .admit(&Method::POST, &HeaderMap::new(), 80)
            .is_none());
        drop(second);
        assert!(admission
            .admit(&Method::POST, &HeaderMap::new(), 80)
            .is_some());
    }
}
