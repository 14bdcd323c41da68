//! The cold tier: segments on S3-compatible object storage (AWS S3, MinIO, Ceph, GCS
//! in interoperability mode) through the `object_store` crate, under
//! `<prefix>/segments/<name>`. Several aggregators can share a bucket, each with its
//! own prefix; [`ColdStore::list`] is what a catalog rebuild starts from.
//!
//! Queries read cold segments through a local cache of whole files, bounded in bytes
//! (least recently used first out), each download checked against the catalog's size
//! and CRC-32C.

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Cold-tier failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store refused or failed a request.
    #[error("object storage ({key}): {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What came back is not what was sent.
    #[error("object {key} failed verification: {what}")]
    Mismatch { key: String, what: String },
    /// The configuration cannot make a client.
    #[error("cold tier configuration: {0}")]
    Config(String),
}

/// Cold-tier settings.
#[derive(Clone, Debug)]
pub struct ColdConfig {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix (no leading or trailing `/`), one per aggregator sharing a bucket.
    pub prefix: String,
    /// Endpoint URL for S3-compatible servers; AWS's by default.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow `http://` endpoints (local MinIO, tests).
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and Ceph expect.
    pub path_style: bool,
    /// Local cache of downloaded segments.
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
}

struct Cache {
    /// name → (bytes, last use)
    files: HashMap<String, (u64, Instant)>,
    bytes: u64,
}

/// A handle to the cold tier.
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    handle: tokio::runtime::Handle,
    cache_dir: PathBuf,
    cache_max: u64,
    cache: Mutex<Cache>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

impl ColdStore {
    /// Makes a client. `handle` runs its requests; calls block the calling thread,
    /// which must not be a tokio worker (use `spawn_blocking` or a plain thread).
    ///
    /// # Errors
    /// [`Error::Config`], [`Error::Io`] when the cache directory cannot be made.
    pub fn new(cfg: &ColdConfig, handle: tokio::runtime::Handle) -> Result<ColdStore, Error> {
        // object_store's HTTP client takes the process's default TLS provider.
        heimdall_common::tls::install_default_provider();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(!cfg.path_style);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let store = b.build().map_err(|e| Error::Config(e.to_string()))?;
        std::fs::create_dir_all(&cfg.cache_dir).map_err(io(&cfg.cache_dir))?;
        // Files left in the cache by an earlier run are kept and counted.
        let mut files = HashMap::new();
        let mut bytes = 0;
        for e in std::fs::read_dir(&cfg.cache_dir)
            .map_err(io(&cfg.cache_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            bytes += len;
            files.insert(name, (len, Instant::now()));
        }
        Ok(ColdStore {
            store: Arc::new(store),
            prefix: cfg.prefix.trim_matches('/').to_owned(),
            handle,
            cache_dir: cfg.cache_dir.clone(),
            cache_max: cfg.cache_max_bytes,
            cache: Mutex::new(Cache { files, bytes }),
        })
    }

    fn key(&self, name: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(format!("segments/{name}"))
        } else {
            ObjPath::from(format!("{}/segments/{name}", self.prefix))
        }
    }

    fn store_err(&self, name: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
        let key = self.key(name).to_string();
        move |source| Error::Store { key, source }
    }

    /// The whole object of segment `name`.
    fn get(&self, name: &str) -> Result<bytes::Bytes, Error> {
        let key = self.key(name);
        let store = self.store.clone();
        self.handle
            .block_on(async move { store.get(&key).await?.bytes().await })
            .map_err(self.store_err(name))
    }

    /// Copies a local segment to the bucket and reads it back: size and CRC-32C must
    /// match before the caller may delete the local file.
    ///
    /// # Errors
    /// [`Error`].
    pub fn upload(&self, local: &Path, name: &str, size: u64, crc: u32) -> Result<(), Error> {
        let started = Instant::now();
        let data = std::fs::read(local).map_err(io(local))?;
        if data.len() as u64 != size || crc32c::crc32c(&data) != crc {
            return Err(Error::Mismatch {
                key: local.display().to_string(),
                what: "the local file does not match the catalog".into(),
            });
        }
        let key = self.key(name);
        let store = self.store.clone();
        let payload = PutPayload::from(data);
        self.handle
            .block_on(async move { store.put(&key, payload).await })
            .map_err(self.store_err(name))?;
        let back = self.get(name)?;
        if back.len() as u64 != size || crc32c::crc32c(&back) != crc {
            return Err(Error::Mismatch {
                key: self.key(name).to_string(),
                what: format!("read back {} bytes with another checksum", back.len()),
            });
        }
        metrics::counter!("heimdall_aggregator_cold_uploaded_bytes_total").increment(size);
        metrics::histogram!("heimdall_aggregator_cold_upload_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// A local copy of a cold segment, downloaded into the cache if needed and checked
    /// against the catalog's size and CRC-32C.
    ///
    /// # Errors
    /// [`Error`].
    pub fn fetch(&self, name: &str, size: u64, crc: u32) -> Result<PathBuf, Error> {
        let path = self.cache_dir.join(name);
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = c.files.get_mut(name) {
                if path.exists() {
                    e.1 = Instant::now();
                    metrics::counter!("heimdall_aggregator_cold_cache_hits_total").increment(1);
                    return Ok(path);
                }
            }
        }
        metrics::counter!("heimdall_aggregator_cold_cache_misses_total").increment(1);
        let started = Instant::now();
        let data = self.get(name)?;
        if data.len() as u64 != size || crc32c::crc32c(&data) != crc {
            return Err(Error::Mismatch {
                key: self.key(name).to_string(),
                what: "the object does not match the catalog".into(),
            });
        }
        let tmp = self
            .cache_dir
            .join(format!("{name}.{:08x}.tmp", fastrand::u32(..)));
        std::fs::write(&tmp, &data).map_err(io(&tmp))?;
        // A cache: it may be lost in a crash (it is checked against the catalog on use),
        // so no fsync; the rename only keeps a half-written object from being seen.
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        metrics::histogram!("heimdall_aggregator_cold_fetch_seconds")
            .record(started.elapsed().as_secs_f64());
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.files
            .insert(name.to_owned(), (size, Instant::now()))
            .is_none()
        {
            c.bytes += size;
        }
        // Evict the least recently used files beyond the bound (never the one just made).
        while c.bytes > self.cache_max && c.files.len() > 1 {
            let Some(old) = c
                .files
                .iter()
                .filter(|(n, _)| n.as_str() != name)
                .min_by_key(|(_, (_, t))| *t)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            if let Some((b, _)) = c.files.remove(&old) {
                c.bytes = c.bytes.saturating_sub(b);
                let _ = std::fs::remove_file(self.cache_dir.join(&old));
                metrics::counter!("heimdall_aggregator_cold_cache_evictions_total").increment(1);
            }
        }
        metrics::gauge!("heimdall_aggregator_cold_cache_bytes").set(c.bytes as f64);
        Ok(path)
    }

    /// A local copy of an object the catalog does not know yet (a rebuild checks it
    /// against its own footer), of `size` bytes.
    ///
    /// # Errors
    /// [`Error`].
    pub fn fetch_unverified(&self, name: &str, size: u64) -> Result<PathBuf, Error> {
        let data = self.get(name)?;
        if data.len() as u64 != size {
            return Err(Error::Mismatch {
                key: self.key(name).to_string(),
                what: format!("listed as {size} bytes, read {}", data.len()),
            });
        }
        let crc = crc32c::crc32c(&data);
        drop(data);
        self.fetch(name, size, crc)
    }

    /// Deletes a segment's object (and its cached copy).
    ///
    /// # Errors
    /// [`Error::Store`] (a missing object is not an error).
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        let key = self.key(name);
        let store = self.store.clone();
        match self
            .handle
            .block_on(async move { store.delete(&key).await })
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_err(name)(e)),
        }
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((b, _)) = c.files.remove(name) {
            c.bytes = c.bytes.saturating_sub(b);
        }
        let _ = std::fs::remove_file(self.cache_dir.join(name));
        Ok(())
    }

    /// Segment names and sizes under this aggregator's prefix.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn list(&self) -> Result<Vec<(String, u64)>, Error> {
        use futures_util::TryStreamExt;
        let prefix = self.key("");
        let store = self.store.clone();
        let metas: Vec<object_store::ObjectMeta> = self
            .handle
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(self.store_err(""))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                name.ends_with(".parquet").then_some((name, m.size))
            })
            .collect())
    }

    /// The object key of a segment, for logs and interoperability.
    pub fn key_of(&self, name: &str) -> String {
        self.key(name).to_string()
    }
}
