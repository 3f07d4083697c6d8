//! A blob store in an S3 bucket (`s3://BUCKET[/PREFIX]`), through the
//! `object_store` crate on a small runtime of its own: the callers (the
//! sidecar's copier thread, the restore before the engine starts) are
//! plain threads, so each call blocks on it.
//!
//! Credentials, region and endpoint come from the standard `AWS_*`
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT` for an S3-compatible
//! server) and are never logged. Plain HTTP is allowed only to a loopback
//! endpoint; anything else needs TLS. Each request is bounded
//! ([`REQUEST_TIMEOUT`], at most [`MAX_RETRIES`] retries within
//! [`RETRY_TIMEOUT`]); retrying beyond that is the copier's business.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::{Blob, BlobError};

/// The longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of one request (server errors, timeouts).
const MAX_RETRIES: usize = 2;
/// The longest the retries of one request may go on.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Objects in a bucket, under a prefix.
#[derive(Debug)]
pub struct S3Blob {
    store: AmazonS3,
    prefix: String,
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl S3Blob {
    /// The store of `url` (`s3://BUCKET[/PREFIX]`), configured from the
    /// process's `AWS_*` environment variables.
    pub fn open(url: &str) -> Result<Self, BlobError> {
        Self::open_with(url, |name| std::env::var(name).ok())
    }

    /// As [`Self::open`], with `env` giving the `AWS_*` variables.
    pub fn open_with(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, BlobError> {
        let bad = |reason: String| BlobError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket: expected s3://BUCKET[/PREFIX]".into()));
        }
        let endpoint = env("AWS_ENDPOINT");
        let loopback = endpoint.as_deref().is_some_and(is_loopback_url);
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
            && !loopback
        {
            return Err(bad(format!(
                "AWS_ENDPOINT {:?} is plain HTTP to a non-loopback host: use https://",
                endpoint.unwrap_or_default()
            )));
        }
        let mut builder = AmazonS3Builder::new();
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            builder = builder.with_region(region);
        }
        if let Some(key) = env("AWS_ACCESS_KEY_ID") {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = env("AWS_SECRET_ACCESS_KEY") {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = env("AWS_SESSION_TOKEN") {
            builder = builder.with_token(token);
        }
        let store = builder
            .with_bucket_name(bucket)
            // (The client options carry `allow_http`: set it there, not
            // before them, or they reset it.)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(loopback)
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(Duration::from_secs(5)),
            )
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| bad(e.to_string()))?;
        // A restore fetches several objects at once from plain threads,
        // each `block_on`ing its own request: a current-thread runtime
        // lets them (one drives the I/O, the others poll their futures).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| bad(format!("starting its runtime: {e}")))?;
        Ok(Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
            runtime,
        })
    }

    fn path(&self, key: &str) -> Result<ObjectPath, BlobError> {
        super::check_key(key)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        })
    }

    fn io(&self, what: &str, key: &str) -> impl FnOnce(object_store::Error) -> BlobError + '_ {
        let what = format!("{what} {}/{key}", self.url);
        move |e| BlobError::Io {
            what,
            reason: e.to_string(),
        }
    }
}

/// Whether `url` (`http://HOST[:PORT]...`) names a loopback host.
fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Blob for S3Blob {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(key)?;
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes.to_vec())))
            .map(|_| ())
            .map_err(self.io("writing", key))
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        // `If-None-Match: *`: S3 (since 2024), MinIO, R2 and moto honour it.
        let options = PutOptions::from(PutMode::Create);
        let put = self.runtime.block_on(self.store.put_opts(
            &path,
            PutPayload::from(bytes.to_vec()),
            options,
        ));
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.io("creating", key)(e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        let got = self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|bytes| bytes.map(|b| b.to_vec()))
            .map_err(self.io("reading", key))
    }

    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        let got = self.runtime.block_on(async {
            match self.store.get_range(&path, range).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|bytes| bytes.map(Vec::from))
            .map_err(self.io("reading a range of", key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let path = self.path(prefix)?;
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(self.io("listing", prefix))?;
        let mut keys: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(|name| format!("{prefix}/{name}")))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("deleting", key)(e)),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn only_loopback_endpoints_are_loopback() {
        for url in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://[::1]:9000",
            "http://127.0.0.5",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:9000",
            "https://s3.amazonaws.com",
            "http://example.com",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
