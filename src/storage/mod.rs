//! Object storage: files on an S3-compatible store (MinIO, AWS S3, …) through the `minio`
//! crate. Webhook uploads and the files scripts read and write live here (SPEC §1 multipart,
//! §7 "Object storage settings"). Nothing here knows about HTTP or workspaces' rights: callers
//! pass a checked key and get typed errors whose text never holds a credential. A workspace's
//! own endpoint is reached only through the guard (`endpoint_guard.rs`, `relay.rs`).

pub mod endpoint_guard;
pub mod keys;
mod relay;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use minio::s3::builders::ObjectContent;
use minio::s3::creds::StaticProvider;
use minio::s3::error::{Error as MinioError, NetworkError, S3ServerError, ValidationErr};
use minio::s3::http::BaseUrl;
use minio::s3::minio_error_response::MinioErrorCode;
use minio::s3::types::{Region, S3Api};
use minio::s3::{MinioClient, MinioClientBuilder};

use crate::config::{S3Config, Secret};
use endpoint_guard::{EndpointError, EndpointGuard};
use relay::Relay;

/// Smallest part S3 accepts in a multipart upload; the memory one upload holds at a time.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Most parts S3 accepts in one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// Where and how to reach one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `http(s)://host[:port]`, no path.
    pub endpoint: String,
    pub bucket: String,
    /// `None`: `us-east-1`, which MinIO and most S3-compatible stores accept.
    pub region: Option<String>,
    pub access_key: String,
    pub secret_key: Secret,
}

impl S3Settings {
    /// The instance default from `S3_*`: none without `S3_ENDPOINT`; a partial one is an error.
    pub fn from_config(config: &S3Config) -> Result<Option<Self>, StorageError> {
        let Some(endpoint) = config.endpoint.clone().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let missing =
            |name: &str| StorageError::Settings(format!("S3_ENDPOINT is set but {name} is not"));
        let settings = Self {
            endpoint,
            bucket: config.bucket.clone().ok_or_else(|| missing("S3_BUCKET"))?,
            region: config.region.clone(),
            access_key: config
                .access_key
                .clone()
                .ok_or_else(|| missing("S3_ACCESS_KEY"))?,
            secret_key: config
                .secret_key
                .clone()
                .ok_or_else(|| missing("S3_SECRET_KEY"))?,
        };
        settings.validate()?;
        Ok(Some(settings))
    }

    /// Checks the settings without connecting: a bad endpoint, bucket or region is named.
    pub fn validate(&self) -> Result<(), StorageError> {
        self.base_url()?;
        minio::s3::types::BucketName::new(&self.bucket)
            .map_err(|e| StorageError::Settings(format!("bucket {:?}: {e}", self.bucket)))?;
        if self.access_key.is_empty() || self.secret_key.expose().is_empty() {
            return Err(StorageError::Settings(
                "access_key and secret_key must not be empty".into(),
            ));
        }
        Ok(())
    }

    fn base_url(&self) -> Result<BaseUrl, StorageError> {
        let mut url: BaseUrl =
            self.endpoint.trim_end_matches('/').parse().map_err(|e| {
                StorageError::Settings(format!("endpoint {:?}: {e}", self.endpoint))
            })?;
        let region = self.region.as_deref().filter(|r| !r.is_empty());
        // A region known up front spares a GetBucketLocation round trip per bucket.
        url.region = Region::new(region.unwrap_or("us-east-1"))
            .map_err(|e| StorageError::Settings(format!("region: {e}")))?;
        Ok(url)
    }
}

/// A failure of the object store, in the words a caller needs to pick a status.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object storage settings: {0}")]
    Settings(String),
    #[error("no such file: {0}")]
    NotFound(String),
    /// The store refused our credentials or the bucket does not exist.
    #[error("the object storage refused the request: {0}")]
    Refused(String),
    #[error("the object storage is unreachable: {0}")]
    Unavailable(String),
    /// The endpoint, or where it led, is not one a workspace may use.
    #[error("{0}")]
    Blocked(String),
    /// The data being uploaded failed (the client's body, a size limit): told by the caller.
    #[error("the upload was interrupted")]
    Interrupted,
    #[error("object storage error: {0}")]
    Other(String),
}

impl StorageError {
    fn from_minio(e: MinioError) -> Self {
        match e {
            MinioError::S3Server(S3ServerError::S3Error(response)) => {
                let detail = format!(
                    "{} {}",
                    response.code(),
                    response.message().as_deref().unwrap_or_default()
                );
                let message = response.message().clone().unwrap_or_default();
                match response.code() {
                    // minio hands unknown codes back lowercased.
                    MinioErrorCode::OtherError(code)
                        if code.eq_ignore_ascii_case(relay::BLOCKED) =>
                    {
                        Self::Blocked(message)
                    }
                    MinioErrorCode::OtherError(code)
                        if code.eq_ignore_ascii_case(relay::UNREACHABLE) =>
                    {
                        Self::Unavailable(message)
                    }
                    MinioErrorCode::NoSuchKey => Self::NotFound(response.resource().to_owned()),
                    MinioErrorCode::NoSuchBucket | MinioErrorCode::AccessDenied => {
                        Self::Refused(detail)
                    }
                    _ if detail.contains("Signature") || detail.contains("AccessKey") => {
                        Self::Refused(detail)
                    }
                    _ => Self::Other(detail),
                }
            }
            MinioError::Network(NetworkError::ReqwestError(e))
            | MinioError::Validation(ValidationErr::HttpError(e))
                if e.is_connect() || e.is_timeout() || e.is_request() =>
            {
                Self::Unavailable(e.to_string())
            }
            // Our own upload stream failed (read before each part is sent): the caller knows why.
            MinioError::DriveIo(_) | MinioError::Validation(ValidationErr::IOError(_)) => {
                Self::Interrupted
            }
            other => Self::Other(other.to_string()),
        }
    }
}

impl From<EndpointError> for StorageError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Invalid(_) => Self::Settings(e.to_string()),
            EndpointError::Refused { .. } => Self::Blocked(e.to_string()),
            EndpointError::Unresolvable { .. } => Self::Unavailable(e.to_string()),
        }
    }
}

/// A stream of file bytes; an error ends the upload.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A file read back: its bytes as they arrive, and its size.
pub struct Download {
    pub size: u64,
    pub bytes: ByteStream,
}

/// One bucket, and the prefix under which this user of it keeps its files (a workspace on a
/// shared bucket). Keys given to and returned by its methods never include the prefix.
#[derive(Clone)]
pub struct ObjectStore {
    client: MinioClient,
    bucket: String,
    prefix: String,
    part_size: u64,
    /// Held by every clone: the last one dropped stops it.
    _relay: Option<Arc<Relay>>,
}

impl fmt::Debug for ObjectStore {
    // The client holds the credentials: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// A client for the operator's own storage (`S3_*`), which connects wherever the settings
    /// say: settings from users go through [`ObjectStore::guarded`]. No network yet.
    /// `max_object_size` sizes multipart parts so that an object of that size fits S3's part
    /// count.
    pub fn trusted(
        settings: &S3Settings,
        prefix: &str,
        max_object_size: u64,
    ) -> Result<Self, StorageError> {
        Self::build(settings, prefix, max_object_size, None)
    }

    /// A client for settings a workspace admin gave. The endpoint must pass `guard` now, and
    /// every connection is checked again on the addresses it resolves, with no redirect
    /// followed: `Blocked` when it does not pass.
    pub async fn guarded(
        settings: &S3Settings,
        guard: &EndpointGuard,
        max_object_size: u64,
    ) -> Result<Self, StorageError> {
        settings.validate()?;
        let endpoint = guard.check(&settings.endpoint).await?;
        let relay = Relay::start(endpoint).await?;
        Self::build(settings, "", max_object_size, Some(Arc::new(relay)))
    }

    fn build(
        settings: &S3Settings,
        prefix: &str,
        max_object_size: u64,
        relay: Option<Arc<Relay>>,
    ) -> Result<Self, StorageError> {
        settings.validate()?;
        let provider =
            StaticProvider::new(&settings.access_key, settings.secret_key.expose(), None);
        let mut builder = MinioClientBuilder::new(settings.base_url()?).provider(Some(provider));
        if let Some(relay) = &relay {
            builder = builder.hook(relay.hook());
        }
        let client = builder
            .build()
            .map_err(|e| StorageError::Settings(e.to_string()))?;
        let needed = max_object_size.div_ceil(MAX_PARTS);
        Ok(Self {
            client,
            bucket: settings.bucket.clone(),
            prefix: prefix.to_owned(),
            part_size: needed.max(MIN_PART_SIZE),
            _relay: relay,
        })
    }

    /// The same bucket and client, with files kept under `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ..self.clone()
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Streams `bytes` into the object `key`. Memory stays at one part (≥ 5 MiB) whatever the
    /// size. Empty chunks are dropped: the client library reads one as the end of the data.
    pub async fn put_stream(
        &self,
        key: &str,
        bytes: ByteStream,
        content_type: Option<&str>,
    ) -> Result<u64, StorageError> {
        let bytes = bytes.filter(|chunk| {
            let keep = !matches!(chunk, Ok(b) if b.is_empty());
            async move { keep }
        });
        let content = ObjectContent::new_from_stream(bytes, None);
        let response = self
            .client
            .put_object_content(self.bucket.as_str(), self.full_key(key), content)
            .map_err(|e| StorageError::Settings(e.to_string()))?
            .part_size(self.part_size)
            .content_type(content_type.map(str::to_owned))
            .build()
            .send()
            .await
            .map_err(StorageError::from_minio)?;
        Ok(response.object_size())
    }

    /// The object `key`, streamed.
    pub async fn get(&self, key: &str) -> Result<Download, StorageError> {
        let response = self
            .client
            .get_object(self.bucket.as_str(), self.full_key(key))
            .map_err(|e| StorageError::Settings(e.to_string()))?
            .build()
            .send()
            .await
            .map_err(StorageError::from_minio)?;
        let (bytes, size) = response
            .into_boxed_stream()
            .map_err(StorageError::from_minio)?;
        Ok(Download { size, bytes })
    }

    /// Deletes the object `key` (S3 answers success for a key that does not exist).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object(self.bucket.as_str(), self.full_key(key))
            .map_err(|e| StorageError::Settings(e.to_string()))?
            .build()
            .send()
            .await
            .map_err(StorageError::from_minio)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: &str, bucket: &str) -> S3Settings {
        S3Settings {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            region: None,
            access_key: "access".into(),
            secret_key: Secret::new("very-secret"),
        }
    }

    #[test]
    fn settings_are_checked_without_connecting() {
        assert!(settings("http://127.0.0.1:9000", "uploads")
            .validate()
            .is_ok());
        assert!(settings("https://s3.example.com/", "uploads")
            .validate()
            .is_ok());
        for (endpoint, bucket) in [
            ("ftp://host", "uploads"),
            ("http://host/some/path", "uploads"),
            ("http://host", "Not A Bucket!"),
            ("http://host", ""),
        ] {
            assert!(
                settings(endpoint, bucket).validate().is_err(),
                "{endpoint} {bucket}"
            );
        }
        let mut no_secret = settings("http://host", "uploads");
        no_secret.secret_key = Secret::new("");
        assert!(no_secret.validate().is_err());
    }

    #[test]
    fn the_instance_default_is_all_or_nothing() {
        let mut config = S3Config {
            endpoint: None,
            bucket: None,
            region: None,
            access_key: None,
            secret_key: None,
            max_upload_size: 1 << 30,
            allowed_hosts: String::new(),
        };
        assert_eq!(S3Settings::from_config(&config).unwrap(), None);
        config.endpoint = Some("http://127.0.0.1:9000".into());
        let err = S3Settings::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("S3_BUCKET"), "{err}");
        config.bucket = Some("uploads".into());
        config.access_key = Some("k".into());
        config.secret_key = Some(Secret::new("s"));
        assert!(S3Settings::from_config(&config).unwrap().is_some());
    }

    #[test]
    fn stores_never_print_their_credentials_and_size_their_parts() {
        let small =
            ObjectStore::trusted(&settings("http://h:9000", "uploads"), "ws/", 1 << 30).unwrap();
        let shown = format!("{small:?} {:?}", settings("http://h:9000", "uploads"));
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(small.part_size, MIN_PART_SIZE);
        assert_eq!(small.full_key("a/b"), "ws/a/b");
        let huge =
            ObjectStore::trusted(&settings("http://h:9000", "uploads"), "", 100 << 30).unwrap();
        assert!(huge.part_size * MAX_PARTS >= 100 << 30);
    }
}
