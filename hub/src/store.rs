//! The bucket: where batches go, stored once. A batch is put create-only under its key (see
//! [`crate::layout`]); when the key exists, the stored object's footer says how far it reaches and
//! nothing is written. Every durable thing the hub has lives here, so hubs share nothing else.
//! Owns object-store access; never decides what a gateway may do (the service does).

use std::sync::Arc;

use anyhow::{anyhow, Context};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::StoreConfig;
use crate::parquet_batch;

/// Why a batch could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store failed or could not be reached: the gateway tries again later.
    #[error("object store: {0}")]
    Unavailable(String),
    /// An object exists under the batch's key that is not a batch of ours.
    #[error("{key} exists and is not an Eddy batch (no {} in its footer)", parquet_batch::LAST_SEQ_KEY)]
    Foreign { key: String },
}

/// What became of a batch.
pub struct Stored {
    pub key: String,
    /// The last sequence number the object under `key` holds.
    pub through: u64,
    pub already: bool,
}

/// A stored batch, as `eddy-hub ls` shows it.
pub struct BatchInfo {
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
}

pub struct Bucket {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub prefix: String,
    /// For logs: the store's URL (no secrets).
    pub url: String,
}

impl Bucket {
    /// Opens the store the config names (no request is made yet).
    pub fn open(cfg: &StoreConfig) -> anyhow::Result<Bucket> {
        let store: Arc<dyn ObjectStore> = if let Some(dir) = cfg.url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).with_context(|| format!("store.url: cannot create {dir}"))?;
            Arc::new(LocalFileSystem::new_with_prefix(dir).with_context(|| format!("store.url {}", cfg.url))?)
        } else {
            let mut b = AmazonS3Builder::from_env().with_url(&cfg.url).with_allow_http(cfg.allow_http);
            if !cfg.endpoint.is_empty() {
                b = b.with_endpoint(&cfg.endpoint);
            }
            if let Some(r) = &cfg.region {
                b = b.with_region(r);
            }
            if let Some(id) = &cfg.access_key_id {
                b = b.with_access_key_id(id);
            }
            if let Some(f) = &cfg.secret_access_key_file {
                let secret = std::fs::read_to_string(f)
                    .with_context(|| format!("store.secret_access_key_file {}", f.display()))?;
                b = b.with_secret_access_key(secret.trim());
            }
            Arc::new(b.build().map_err(|e| anyhow!("store: {e}"))?)
        };
        Ok(Bucket { store, prefix: crate::layout::normalize_prefix(&cfg.prefix), url: cfg.url.clone() })
    }

    /// Stores `parquet` under `key` unless the key is taken; then reads how far the stored batch
    /// reaches.
    pub async fn put_once(&self, key: &str, last_seq: u64, parquet: Vec<u8>) -> Result<Stored, StoreError> {
        let path = ObjectPath::from(key);
        // A HEAD first: a resent batch is common after an outage, and a HEAD is cheaper than a
        // PUT that uploads the whole batch to be refused.
        match self.store.head(&path).await {
            Ok(_) => return self.existing(key, &path).await,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        }
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&path, PutPayload::from(parquet), opts).await {
            Ok(_) => Ok(Stored { key: key.to_string(), through: last_seq, already: false }),
            // Another hub stored it between our HEAD and PUT (a gateway that failed over).
            Err(object_store::Error::AlreadyExists { .. }) => self.existing(key, &path).await,
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// The stored batches under `streams/[<stream>/[gateway=<gateway>/]]`, in key order.
    pub async fn list_batches(&self, stream: Option<&str>, gateway: Option<&str>) -> anyhow::Result<Vec<BatchInfo>> {
        use futures::TryStreamExt;
        let mut prefix = format!("{}streams", self.prefix);
        if let Some(s) = stream {
            prefix.push_str(&format!("/{s}"));
            if let Some(g) = gateway {
                prefix.push_str(&format!("/gateway={g}"));
            }
        }
        let want_gateway = gateway.map(|g| format!("/gateway={g}/"));
        let metas: Vec<_> = self.store.list(Some(&ObjectPath::from(prefix))).try_collect().await?;
        let mut out = Vec::new();
        for m in metas {
            let key = m.location.to_string();
            if !key.ends_with(".parquet") || want_gateway.as_ref().is_some_and(|g| !key.contains(g.as_str())) {
                continue;
            }
            let body = self.store.get(&m.location).await?.bytes().await?;
            let rows = parquet_batch::row_count(body).unwrap_or(0);
            out.push(BatchInfo { key, rows, bytes: m.size });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn existing(&self, key: &str, path: &ObjectPath) -> Result<Stored, StoreError> {
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let through =
            parquet_batch::stored_last_seq(bytes).ok_or_else(|| StoreError::Foreign { key: key.to_string() })?;
        Ok(Stored { key: key.to_string(), through, already: true })
    }
}
