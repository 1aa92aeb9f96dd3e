//! Load shedding on the run routes: at most `MAX_INFLIGHT_REQUESTS` requests and
//! `MAX_INFLIGHT_BODY_BYTES` of their bodies are worked on at once. One more is answered 503
//! with `Retry-After` at once instead of waiting in memory, which would only make every caller
//! slower and the process bigger until it is killed.
//!
//! A request holds its share from before its body is read until its job is queued (or refused):
//! `submit` takes it into the task that records and publishes the job, which gives it back when
//! done even if the caller hung up; a sync or SSE call waiting for its job's result holds none.
//! A body's share grows, before it is parsed, by what its JSON values may take in memory (a
//! 16 MiB array of small numbers becomes ~300 MiB of values).

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
    /// What parsing the body may take beyond its bytes.
    parsing: Option<OwnedSemaphorePermit>,
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
            parsing: None,
        })
    }
}

/// Bytes that `body` may take once parsed into `serde_json::Value`s, beyond the body itself: a
/// value is 32 bytes and arrays and maps grow by doubling, so each value or key — at most one
/// per comma, colon or opening bracket outside strings, plus the first — may cost up to 64.
fn parsing_cost(body: &[u8]) -> usize {
    let (mut tokens, mut in_string, mut escaped) = (1usize, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => tokens += 1,
                _ => {}
            }
        }
    }
    tokens.saturating_mul(64)
}

/// Takes, for the current run request, the memory its body may need once parsed: 413 if that
/// alone is more than `MAX_INFLIGHT_BODY_BYTES`, 503 with `Retry-After` if other requests hold
/// it now. A request outside the admission middleware (none today) is not counted.
pub fn reserve_parsing(state: &AppState, body: &[u8]) -> Result<(), ApiError> {
    let admission = state.admission();
    let cost = parsing_cost(body);
    if cost > admission.body_budget {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body holds too many JSON values: parsed, it would take about {} MiB, more than \
             MAX_INFLIGHT_BODY_BYTES allows",
            cost >> 20
        )));
    }
    let permits = u32::try_from(cost).unwrap_or(u32::MAX);
    TICKET
        .try_with(|ticket| {
            let mut ticket = ticket.borrow_mut();
            let Some(ticket) = ticket.as_mut() else {
                return Ok(());
            };
            let permit = admission
                .body_bytes
                .clone()
                .try_acquire_many_owned(permits)
                .map_err(|_| {
                    ApiError::Overloaded("too many request bodies in memory", RETRY_AFTER)
                })?;
            ticket.parsing = Some(permit);
            Ok(())
        })
        .unwrap_or(Ok(()))
}

/// The routes that take a job's body and submit it.
fn is_run_route(path: &str) -> bool {
    path.strip_prefix("/api/w/{workspace}/")
        .is_some_and(|route| {
            [
                "jobs/run/",
                "jobs/run_wait_result/",
                "jobs/run_and_stream/",
                "hooks/",
            ]
            .iter()
            .any(|run| route.starts_with(run))
        })
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

/// The current request's share, taken out of the request: what holds it next (the task that
/// records and publishes the job, which outlives a caller hanging up) gives it back when done.
pub struct Share {
    _ticket: Option<Ticket>,
}

pub fn take() -> Share {
    Share {
        _ticket: TICKET
            .try_with(|ticket| ticket.borrow_mut().take())
            .ok()
            .flatten(),
    }
}

/// The current request no longer holds a body (it waits for a job's result): its share goes
/// back.
pub fn release() {
    drop(take());
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
    fn parsing_costs_count_values_outside_strings() {
        assert_eq!(parsing_cost(b""), 64);
        assert_eq!(parsing_cost(b"[1,2,3]"), 4 * 64);
        assert_eq!(parsing_cost(br#"{"a,b:[{": "x\",y"}"#), 3 * 64);
        let big = format!("[{}1]", "1,".repeat(1000));
        assert_eq!(parsing_cost(big.as_bytes()), 1002 * 64);
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
