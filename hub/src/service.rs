//! The `eddy.v1.Hub` service: checks a push against its gateway's identity and the limits, then
//! stores it through the [`Bucket`]. Holds no state of its own between calls, so any number of
//! hubs can serve one fleet. Owns the mapping from failures to gRPC codes: the gateway's fault is
//! INVALID_ARGUMENT / PERMISSION_DENIED (retrying will not help), the store's is UNAVAILABLE.

use std::sync::Arc;

use std::pin::Pin;
use std::time::Duration;

use eddy_proto::v1::hub_server::Hub;
use eddy_proto::v1::{
    BlobChunk, CheckpointIndex, GetBlobRequest, GetCheckpointRequest, ListCheckpointsReply, ListCheckpointsRequest,
    MissingBlobsReply, MissingBlobsRequest, PushRowsReply, PushRowsRequest, PutBlobReply, PutCheckpointReply,
    RetractRowsReply, RetractRowsRequest,
};
use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::checkpoints::{BackupError, Retention};
use crate::config::{BackupConfig, Limits};
use crate::parquet_batch::{self, Origin};
use crate::store::{Bucket, StoreError};
use crate::{identity, layout};

/// Digests one MissingBlobs request may ask about.
const MAX_DIGESTS: usize = 10_000;

pub struct HubService {
    pub bucket: Arc<Bucket>,
    pub limits: Limits,
    /// Pushes and blob uploads in progress, at most `limits.max_concurrent_pushes`.
    pub pushes: Arc<Semaphore>,
    retention: Retention,
    operators: Vec<String>,
}

impl HubService {
    pub fn new(bucket: Arc<Bucket>, limits: Limits, backup: &BackupConfig, operators: Vec<String>) -> HubService {
        let pushes = Arc::new(Semaphore::new(limits.max_concurrent_pushes));
        let retention = Retention { keep: backup.keep, blob_grace: Duration::from_secs(backup.blob_grace_s) };
        HubService { bucket, limits, pushes, retention, operators }
    }

    /// The caller may read (or retract) `gateway`'s things: it is that gateway, or an operator.
    fn may_act_for(&self, caller: &str, gateway: &str) -> Result<(), Status> {
        if caller == gateway || self.operators.iter().any(|o| o == caller) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("'{caller}' may not read or change gateway '{gateway}''s backups")))
    }
}

fn backup_status(e: BackupError) -> Status {
    match e {
        BackupError::Invalid(m) => Status::invalid_argument(m),
        BackupError::NotFound(m) => Status::not_found(m),
        BackupError::Unavailable(m) => {
            tracing::warn!(error = %m, "backup request failed at the store");
            Status::unavailable(format!("object store: {m}"))
        }
    }
}

fn check_pipeline(p: &str) -> Result<(), Status> {
    if layout::valid_name(p, 128) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!("'{p}' is not a pipeline name (1-128 of A-Z a-z 0-9 _ - .)")))
}

fn check_gateway(g: &str) -> Result<(), Status> {
    if layout::valid_name(g, 64) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!("'{g}' is not a gateway id (1-64 of A-Z a-z 0-9 _ - .)")))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

/// The caller's gateway id, from the certificate TLS verified.
fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a gateway certificate is required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a gateway certificate is required"))?;
    identity::gateway_of(leaf).map_err(Status::permission_denied)
}

#[tonic::async_trait]
impl Hub for HubService {
    type GetBlobStream = ChunkStream;

    async fn missing_blobs(&self, req: Request<MissingBlobsRequest>) -> Result<Response<MissingBlobsReply>, Status> {
        let gateway = caller(&req)?;
        let r = req.into_inner();
        check_pipeline(&r.pipeline)?;
        if r.sha256.len() > MAX_DIGESTS {
            return Err(Status::invalid_argument(format!("at most {MAX_DIGESTS} digests per request")));
        }
        let dir = layout::checkpoint_dir(&self.bucket.prefix, &gateway, &r.pipeline);
        let sha256 = self.bucket.missing_blobs(&dir, &r.sha256).await.map_err(backup_status)?;
        Ok(Response::new(MissingBlobsReply { sha256 }))
    }

    async fn put_blob(&self, req: Request<Streaming<BlobChunk>>) -> Result<Response<PutBlobReply>, Status> {
        let gateway = caller(&req)?;
        let mut chunks = req.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("an empty blob upload"))?;
        check_pipeline(&first.pipeline)?;
        let _permit = self.pushes.acquire().await.map_err(|_| Status::unavailable("the hub is shutting down"))?;
        let dir = layout::checkpoint_dir(&self.bucket.prefix, &gateway, &first.pipeline);
        let head = futures::stream::once(async move { Ok(bytes::Bytes::from(first.data)) });
        let rest =
            chunks.map(|c| c.map(|c| bytes::Bytes::from(c.data)).map_err(|s| BackupError::Invalid(s.to_string())));
        let stored = self
            .bucket
            .put_blob(&dir, &first.sha256, first.total_bytes, self.limits.max_blob_bytes, Box::pin(head.chain(rest)))
            .await
            .map_err(backup_status)?;
        tracing::debug!(gateway = %gateway, dir = %dir, sha256 = %first.sha256, stored, "blob");
        Ok(Response::new(PutBlobReply { stored }))
    }

    async fn put_checkpoint(&self, req: Request<CheckpointIndex>) -> Result<Response<PutCheckpointReply>, Status> {
        let gateway = caller(&req)?;
        let mut index = req.into_inner();
        check_pipeline(&index.pipeline)?;
        index.gateway = gateway.clone();
        let dir = layout::checkpoint_dir(&self.bucket.prefix, &gateway, &index.pipeline);
        let seq = index.seq;
        let kept = self.bucket.put_checkpoint(&dir, index, self.retention).await.map_err(backup_status)?;
        tracing::info!(gateway = %gateway, dir = %dir, seq, kept, "checkpoint backed up");
        Ok(Response::new(PutCheckpointReply { kept }))
    }

    async fn list_checkpoints(
        &self,
        req: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsReply>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_gateway(&r.gateway)?;
        self.may_act_for(&who, &r.gateway)?;
        let pipeline = (!r.pipeline.is_empty()).then_some(r.pipeline.as_str());
        if let Some(p) = pipeline {
            check_pipeline(p)?;
        }
        let checkpoints = self.bucket.list_checkpoints(&r.gateway, pipeline).await.map_err(backup_status)?;
        Ok(Response::new(ListCheckpointsReply { checkpoints }))
    }

    async fn get_checkpoint(&self, req: Request<GetCheckpointRequest>) -> Result<Response<CheckpointIndex>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_gateway(&r.gateway)?;
        check_pipeline(&r.pipeline)?;
        self.may_act_for(&who, &r.gateway)?;
        let dir = layout::checkpoint_dir(&self.bucket.prefix, &r.gateway, &r.pipeline);
        Ok(Response::new(self.bucket.get_checkpoint(&dir, r.seq).await.map_err(backup_status)?))
    }

    async fn get_blob(&self, req: Request<GetBlobRequest>) -> Result<Response<ChunkStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_gateway(&r.gateway)?;
        check_pipeline(&r.pipeline)?;
        self.may_act_for(&who, &r.gateway)?;
        let dir = layout::checkpoint_dir(&self.bucket.prefix, &r.gateway, &r.pipeline);
        let s = self.bucket.get_blob(&dir, &r.sha256).await.map_err(backup_status)?;
        let chunks =
            s.map(|c| c.map(|data| BlobChunk { data: data.to_vec(), ..Default::default() }).map_err(backup_status));
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn retract_rows(&self, req: Request<RetractRowsRequest>) -> Result<Response<RetractRowsReply>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_gateway(&r.gateway)?;
        self.may_act_for(&who, &r.gateway)?;
        if !layout::valid_name(&r.stream, 128) {
            return Err(Status::invalid_argument(format!("'{}' is not a stream name", r.stream)));
        }
        let (deleted, cut) =
            self.bucket.retract_rows(&r.stream, &r.gateway, r.outbox_id, r.from_seq).await.map_err(backup_status)?;
        tracing::info!(
            caller = %who, gateway = %r.gateway, stream = %r.stream, outbox = r.outbox_id, from_seq = r.from_seq,
            deleted, cut, "rows retracted for a restore"
        );
        Ok(Response::new(RetractRowsReply { deleted, cut }))
    }

    async fn push_rows(&self, req: Request<PushRowsRequest>) -> Result<Response<PushRowsReply>, Status> {
        let gateway = caller(&req)?;
        let r = req.into_inner();
        if !layout::valid_name(&r.stream, 128) {
            return Err(Status::invalid_argument(format!(
                "stream '{}' is not a stream name (1-128 of A-Z a-z 0-9 _ - .)",
                r.stream
            )));
        }
        if !layout::valid_date(&r.date) {
            return Err(Status::invalid_argument(format!("date '{}' is not yyyy-mm-dd", r.date)));
        }
        let _permit = self.pushes.acquire().await.map_err(|_| Status::unavailable("the hub is shutting down"))?;
        let key = layout::batch_key(&self.bucket.prefix, &r.stream, &gateway, &r.date, r.outbox_id, r.first_seq);
        let origin = Origin {
            gateway: &gateway,
            stream: &r.stream,
            outbox: r.outbox_id,
            first_seq: r.first_seq,
            last_seq: r.last_seq,
        };
        // Checked before the store is asked: a malformed batch is refused even when resent.
        let parquet = parquet_batch::to_parquet(&r.arrow_ipc, &origin, self.limits.max_push_rows)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let stored = self.bucket.put_once(&key, r.last_seq, parquet).await.map_err(|e| match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(gateway = %gateway, stream = %r.stream, error = %e, "cannot store a batch");
                Status::unavailable(e.to_string())
            }
            StoreError::Foreign { .. } => Status::failed_precondition(e.to_string()),
        })?;
        tracing::debug!(
            gateway = %gateway, stream = %r.stream, first_seq = r.first_seq, last_seq = r.last_seq,
            through = stored.through, already = stored.already, key = %stored.key, "batch stored"
        );
        Ok(Response::new(PushRowsReply {
            stored_through: stored.through,
            object: stored.key,
            already_stored: stored.already,
        }))
    }
}
