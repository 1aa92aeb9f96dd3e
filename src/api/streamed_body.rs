//! Request bodies read as streams (multipart webhooks, scripts' file uploads): a body that can
//! be finished after a parser gave up on it, and upload streams that stop at a size limit and
//! say why they stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use futures::{Stream, StreamExt};

use super::error::ApiError;
use crate::storage::ByteStream;

/// What is read of a refused body before the connection is given up.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request body that a parser reads, and that can be read to its end after the parser gave
/// up (a limit, a malformed part): a client still sending then gets the 4xx answer rather than
/// a connection reset under its feet.
#[derive(Clone)]
pub struct SharedBody(Arc<tokio::sync::Mutex<BodyDataStream>>);

impl SharedBody {
    pub fn new(body: Body) -> Self {
        Self(Arc::new(tokio::sync::Mutex::new(body.into_data_stream())))
    }

    /// The body's bytes as they arrive.
    pub fn stream(
        &self,
    ) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static {
        Box::pin(futures::stream::unfold(self.clone(), |body| async move {
            let next = body.0.lock().await.next().await;
            next.map(|item| (item, body))
        }))
    }

    /// Reads and drops what is left, within `DRAIN_MAX` bytes and `DRAIN_TIME`.
    pub async fn drain(&self) {
        let drained = async {
            let mut body = self.0.lock().await;
            let mut read = 0;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len();
                if read > DRAIN_MAX {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
    }
}

/// Why an upload stream stopped, when the cause was on our side (a size limit, the client's
/// body) rather than the object store's.
#[derive(Clone, Default)]
pub struct StopReason(Arc<Mutex<Option<ApiError>>>);

impl StopReason {
    fn stop(&self, error: ApiError) -> std::io::Error {
        let message = error.to_string();
        *self.0.lock().expect("stop reason lock") = Some(error);
        std::io::Error::other(message)
    }

    pub fn take(&self) -> Option<ApiError> {
        self.0.lock().expect("stop reason lock").take()
    }
}

/// `chunks` as a stream for the object store. It stops, recording why, when the bytes counted
/// in `total` (shared by the files of one request) pass `limit` (`MAX_UPLOAD_SIZE`), or when
/// `chunks` fails.
pub fn upload_stream<E>(
    chunks: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    total: Arc<AtomicU64>,
    limit: u64,
    on_error: impl Fn(E) -> ApiError + Send + 'static,
) -> (ByteStream, StopReason) {
    let stopped = StopReason::default();
    let reason = stopped.clone();
    let stream = chunks.map(move |chunk| match chunk {
        Ok(bytes) => {
            let len = bytes.len() as u64;
            if total.fetch_add(len, Ordering::Relaxed) + len > limit {
                Err(reason.stop(ApiError::PayloadTooLarge(format!(
                    "the files are larger than MAX_UPLOAD_SIZE ({limit} bytes)"
                ))))
            } else {
                Ok(bytes)
            }
        }
        Err(e) => Err(reason.stop(on_error(e))),
    });
    (Box::pin(stream), stopped)
}
