//! The `eddy.v1.Hub` service: checks a push against its gateway's identity and the limits, then
//! stores it through the [`Bucket`]. Holds no state of its own between calls, so any number of
//! hubs can serve one fleet. Owns the mapping from failures to gRPC codes: the gateway's fault is
//! INVALID_ARGUMENT / PERMISSION_DENIED (retrying will not help), the store's is UNAVAILABLE.

use std::sync::Arc;

use std::pin::Pin;
use std::time::Duration;

use eddy_proto::v1::hub_server::Hub;
use eddy_proto::v1::{
    ActualState, BlobChunk, CheckpointIndex, DesiredState, DesiredSummary, FleetStatusReply, FleetStatusRequest,
    GetBlobRequest, GetCheckpointRequest, GetDesiredRequest, ListCheckpointsReply, ListCheckpointsRequest,
    ListDesiredReply, ListDesiredRequest, MissingBlobsReply, MissingBlobsRequest, PipelineDigest, PushRowsReply,
    PushRowsRequest, PutBlobReply, PutCheckpointReply, PutDesiredRequest, ReportActualReply, RetractRowsReply,
    RetractRowsRequest, RollbackDesiredRequest, WatchDesiredRequest,
};
use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::checkpoints::{now_ms, BucketError, Retention};
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
    /// How often a watch looks for a new version of its group.
    poll: Duration,
    /// Each group's newest version as last listed, shared by every watch of the group on this
    /// hub: one LIST per group per poll period, however many gateways watch it.
    newest: Arc<NewestCache>,
}

/// Groups' newest desired versions, each as listed at most one poll period ago. A cache only:
/// the bucket stays the truth (a stale entry delays a rollout by at most one period).
#[derive(Default)]
pub struct NewestCache {
    groups: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Option<DesiredState>)>>,
}

/// Groups remembered at most; beyond it the cache starts again (bounded memory).
const MAX_CACHED_GROUPS: usize = 10_000;

impl NewestCache {
    async fn newest(&self, bucket: &Bucket, group: &str, max_age: Duration) -> Result<Option<DesiredState>, Status> {
        let fresh = |g: &std::collections::HashMap<_, (std::time::Instant, Option<DesiredState>)>| {
            g.get(group).filter(|(at, _)| at.elapsed() < max_age).map(|(_, d)| d.clone())
        };
        // Not held across the LIST: watches of other groups never wait for it.
        if let Some(d) = fresh(&self.groups.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(d);
        }
        let d = bucket.newest_desired(group).await.map_err(bucket_status)?;
        let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_CACHED_GROUPS {
            g.clear();
        }
        g.insert(group.to_string(), (std::time::Instant::now(), d.clone()));
        Ok(d)
    }
}

/// Pipelines in one version, and bytes of SQL in one pipeline, at most.
const MAX_PIPELINES: usize = 64;
const MAX_SQL_BYTES: usize = 1 << 20;
/// Largest config fragment of a version (gateways check what is in it).
const MAX_CONFIG_BYTES: usize = 64 << 10;
/// Versions a `ListDesired` gives when it does not say, and at most (each is read whole from
/// the bucket to be summarised).
const DEFAULT_LISTED_VERSIONS: usize = 20;
const MAX_LISTED_VERSIONS: usize = 100;

impl HubService {
    pub fn new(
        bucket: Arc<Bucket>,
        limits: Limits,
        backup: &BackupConfig,
        operators: Vec<String>,
        poll: Duration,
    ) -> HubService {
        let pushes = Arc::new(Semaphore::new(limits.max_concurrent_pushes));
        let retention = Retention { keep: backup.keep, blob_grace: Duration::from_secs(backup.blob_grace_s) };
        HubService { bucket, limits, pushes, retention, operators, poll, newest: Arc::default() }
    }

    /// The bucket folder of `gateway`'s backups of `pipeline`, once the names are checked and the
    /// caller may act for that gateway.
    fn backups_of(&self, who: &str, gateway: &str, pipeline: &str) -> Result<String, Status> {
        check_gateway(gateway)?;
        check_pipeline(pipeline)?;
        self.may_act_for(who, gateway)?;
        Ok(layout::checkpoint_dir(&self.bucket.prefix, gateway, pipeline))
    }

    /// The caller is an operator (`[access] operators`).
    fn operator(&self, caller: &str, what: &str) -> Result<(), Status> {
        if self.operators.iter().any(|o| o == caller) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("'{caller}' is not an operator ([access] operators): it may not {what}")))
    }

    /// The caller may read (or retract) `gateway`'s things: it is that gateway, or an operator.
    fn may_act_for(&self, caller: &str, gateway: &str) -> Result<(), Status> {
        if caller == gateway || self.operators.iter().any(|o| o == caller) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("'{caller}' may not read or change gateway '{gateway}''s backups")))
    }
}

/// A version without its text: names, digests and sizes.
fn summary(d: &DesiredState) -> DesiredSummary {
    let sha256 =
        |text: &str| crate::checkpoints::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    DesiredSummary {
        version: d.version,
        created_ms: d.created_ms,
        created_by: d.created_by.clone(),
        note: d.note.clone(),
        rolled_back_to: d.rolled_back_to,
        reset_state: d.reset_state,
        pipelines: d
            .pipelines
            .iter()
            .map(|p| PipelineDigest { name: p.name.clone(), sql_sha256: sha256(&p.sql), sql_bytes: p.sql.len() as u64 })
            .collect(),
        config_sha256: if d.config.is_empty() { String::new() } else { sha256(&d.config) },
    }
}

fn bucket_status(e: BucketError) -> Status {
    match e {
        BucketError::Invalid(m) => Status::invalid_argument(m),
        BucketError::NotFound(m) => Status::not_found(m),
        BucketError::Unavailable(m) => {
            tracing::warn!(error = %m, "a request failed at the store");
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

fn check_group(g: &str) -> Result<(), Status> {
    if layout::valid_name(g, 64) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!("'{g}' is not a group name (1-64 of A-Z a-z 0-9 _ - .)")))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;
type DesiredStream = Pin<Box<dyn Stream<Item = Result<DesiredState, Status>> + Send>>;

/// The caller's gateway id, from the certificate TLS verified.
fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a gateway certificate is required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a gateway certificate is required"))?;
    identity::gateway_of(leaf).map_err(Status::permission_denied)
}

#[tonic::async_trait]
impl Hub for HubService {
    type GetBlobStream = ChunkStream;
    type WatchDesiredStream = DesiredStream;

    async fn put_desired(&self, req: Request<PutDesiredRequest>) -> Result<Response<DesiredState>, Status> {
        let who = caller(&req)?;
        self.operator(&who, "deploy to a group")?;
        let r = req.into_inner();
        check_group(&r.group)?;
        if r.pipelines.len() > MAX_PIPELINES {
            return Err(Status::invalid_argument(format!("at most {MAX_PIPELINES} pipelines per version")));
        }
        let mut names = std::collections::HashSet::new();
        for p in &r.pipelines {
            check_pipeline(&p.name)?;
            if p.sql.len() > MAX_SQL_BYTES {
                return Err(Status::invalid_argument(format!(
                    "pipeline {}: over {MAX_SQL_BYTES} bytes of SQL",
                    p.name
                )));
            }
            if !names.insert(p.name.as_str()) {
                return Err(Status::invalid_argument(format!("pipeline {} is given twice", p.name)));
            }
        }
        if r.config.len() > MAX_CONFIG_BYTES {
            return Err(Status::invalid_argument(format!("the config fragment is over {MAX_CONFIG_BYTES} bytes")));
        }
        let d = DesiredState {
            group: r.group,
            version: 0,
            pipelines: r.pipelines,
            created_ms: now_ms(),
            created_by: who.clone(),
            note: r.note,
            rolled_back_to: 0,
            reset_state: r.reset_state,
            config: r.config,
        };
        let d = self.bucket.put_desired(d).await.map_err(bucket_status)?;
        tracing::info!(operator = %who, group = %d.group, version = d.version, pipelines = d.pipelines.len(), "desired state");
        Ok(Response::new(d))
    }

    async fn rollback_desired(&self, req: Request<RollbackDesiredRequest>) -> Result<Response<DesiredState>, Status> {
        let who = caller(&req)?;
        self.operator(&who, "roll a group back")?;
        let r = req.into_inner();
        check_group(&r.group)?;
        let prev = self.bucket.rollback_source(&r.group, r.to_version).await.map_err(bucket_status)?;
        let d = DesiredState {
            group: r.group,
            version: 0,
            pipelines: prev.pipelines,
            created_ms: now_ms(),
            created_by: who.clone(),
            note: format!("rollback to version {}", prev.version),
            rolled_back_to: prev.version,
            reset_state: r.reset_state,
            config: prev.config,
        };
        let d = self.bucket.put_desired(d).await.map_err(bucket_status)?;
        tracing::info!(operator = %who, group = %d.group, version = d.version, to = prev.version, "rollback");
        Ok(Response::new(d))
    }

    async fn watch_desired(&self, req: Request<WatchDesiredRequest>) -> Result<Response<DesiredStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_group(&r.group)?;
        tracing::debug!(gateway = %who, group = %r.group, after = r.after_version, "watching");
        let (bucket, poll, cache) = (self.bucket.clone(), self.poll, self.newest.clone());
        // The newest version above the last one sent, as soon as there is one; a store error
        // ends the stream (the gateway reconnects with the version it has).
        let s = futures::stream::unfold((r.group, r.after_version, false), move |(group, after, failed)| {
            let (bucket, cache) = (bucket.clone(), cache.clone());
            async move {
                if failed {
                    return None;
                }
                loop {
                    match cache.newest(&bucket, &group, poll).await {
                        Ok(Some(d)) if d.version > after => {
                            let v = d.version;
                            return Some((Ok(d), (group, v, false)));
                        }
                        Ok(_) => tokio::time::sleep(poll).await,
                        Err(e) => return Some((Err(e), (group, after, true))),
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn list_desired(&self, req: Request<ListDesiredRequest>) -> Result<Response<ListDesiredReply>, Status> {
        let who = caller(&req)?;
        self.operator(&who, "read a group's versions")?;
        let r = req.into_inner();
        check_group(&r.group)?;
        let limit = match r.limit {
            0 => DEFAULT_LISTED_VERSIONS,
            n => (n as usize).min(MAX_LISTED_VERSIONS),
        };
        let (versions, more) =
            self.bucket.list_desired(&r.group, r.before_version, limit).await.map_err(bucket_status)?;
        Ok(Response::new(ListDesiredReply { versions: versions.iter().map(summary).collect(), more }))
    }

    async fn get_desired(&self, req: Request<GetDesiredRequest>) -> Result<Response<DesiredState>, Status> {
        let who = caller(&req)?;
        self.operator(&who, "read a group's versions")?;
        let r = req.into_inner();
        check_group(&r.group)?;
        self.bucket.get_desired(&r.group, r.version).await.map_err(bucket_status).map(Response::new)
    }

    async fn report_actual(&self, req: Request<ActualState>) -> Result<Response<ReportActualReply>, Status> {
        let who = caller(&req)?;
        let mut a = req.into_inner();
        if !a.group.is_empty() {
            check_group(&a.group)?;
        }
        if a.pipelines.len() > 4 * MAX_PIPELINES || a.rejected_reason.len() > 64 << 10 {
            return Err(Status::invalid_argument("a report over its bounds"));
        }
        a.gateway = who;
        a.reported_ms = now_ms();
        self.bucket.put_actual(&a).await.map_err(bucket_status)?;
        Ok(Response::new(ReportActualReply {}))
    }

    async fn fleet_status(&self, req: Request<FleetStatusRequest>) -> Result<Response<FleetStatusReply>, Status> {
        let who = caller(&req)?;
        self.operator(&who, "read the fleet's status")?;
        let r = req.into_inner();
        let group = (!r.group.is_empty()).then_some(r.group.as_str());
        if let Some(g) = group {
            check_group(g)?;
        }
        let (gateways, groups) = self.bucket.fleet_status(group).await.map_err(bucket_status)?;
        Ok(Response::new(FleetStatusReply { gateways, groups }))
    }

    async fn missing_blobs(&self, req: Request<MissingBlobsRequest>) -> Result<Response<MissingBlobsReply>, Status> {
        let gateway = caller(&req)?;
        let r = req.into_inner();
        check_pipeline(&r.pipeline)?;
        if r.sha256.len() > MAX_DIGESTS {
            return Err(Status::invalid_argument(format!("at most {MAX_DIGESTS} digests per request")));
        }
        let dir = layout::checkpoint_dir(&self.bucket.prefix, &gateway, &r.pipeline);
        let sha256 = self.bucket.missing_blobs(&dir, &r.sha256).await.map_err(bucket_status)?;
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
            chunks.map(|c| c.map(|c| bytes::Bytes::from(c.data)).map_err(|s| BucketError::Invalid(s.to_string())));
        let stored = self
            .bucket
            .put_blob(&dir, &first.sha256, first.total_bytes, self.limits.max_blob_bytes, Box::pin(head.chain(rest)))
            .await
            .map_err(bucket_status)?;
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
        let kept = self.bucket.put_checkpoint(&dir, index, self.retention).await.map_err(bucket_status)?;
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
        let checkpoints = self.bucket.list_checkpoints(&r.gateway, pipeline).await.map_err(bucket_status)?;
        Ok(Response::new(ListCheckpointsReply { checkpoints }))
    }

    async fn get_checkpoint(&self, req: Request<GetCheckpointRequest>) -> Result<Response<CheckpointIndex>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let dir = self.backups_of(&who, &r.gateway, &r.pipeline)?;
        Ok(Response::new(self.bucket.get_checkpoint(&dir, r.seq).await.map_err(bucket_status)?))
    }

    async fn get_blob(&self, req: Request<GetBlobRequest>) -> Result<Response<ChunkStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let dir = self.backups_of(&who, &r.gateway, &r.pipeline)?;
        let s = self.bucket.get_blob(&dir, &r.sha256).await.map_err(bucket_status)?;
        let chunks =
            s.map(|c| c.map(|data| BlobChunk { data: data.to_vec(), ..Default::default() }).map_err(bucket_status));
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
            self.bucket.retract_rows(&r.stream, &r.gateway, r.outbox_id, r.from_seq).await.map_err(bucket_status)?;
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
