//! A client of the fleet's hub (`eddy.v1.Hub`), over mutual TLS: the hub knows a gateway by its
//! certificate. Owns the connection; never retries a push itself (the caller's outbox does, and
//! a push sent twice is stored once).

use std::time::Duration;

use eddy_proto::v1::hub_client::HubClient as RawHubClient;
use eddy_proto::v1::{
    ActualState, BlobChunk, CheckpointIndex, CheckpointSummary, DesiredState, FleetStatusReply, FleetStatusRequest,
    GetBlobRequest, GetCheckpointRequest, GetDesiredRequest, ListCheckpointsRequest, ListDesiredReply,
    ListDesiredRequest, MissingBlobsRequest, PipelineFile, PushRowsReply, PushRowsRequest, PutDesiredRequest,
    RetractRowsReply, RetractRowsRequest, RollbackDesiredRequest, WatchDesiredRequest,
};
use tonic::transport::Channel;

use crate::{status_error, ClientError, Target, Timeouts};

/// Largest request the hub is sent (a batch is bounded by the sink's batch_bytes).
const MAX_REQUEST_BYTES: usize = 256 << 20;
/// Largest reply taken (a checkpoint index holds its manifest).
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Bytes of a blob per message.
pub const BLOB_CHUNK_BYTES: usize = 1 << 20;

/// A connection to one hub.
#[derive(Clone)]
pub struct HubClient {
    inner: RawHubClient<Channel>,
    request_timeout: Duration,
    target: String,
}

impl HubClient {
    /// Connects now, so an unreachable hub or a refused certificate fails here.
    pub async fn connect(target: &Target, timeouts: Timeouts) -> Result<HubClient, ClientError> {
        let channel = target.connect(&timeouts).await?;
        let inner = RawHubClient::new(channel)
            .max_encoding_message_size(MAX_REQUEST_BYTES)
            .max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(HubClient { inner, request_timeout: timeouts.request, target: target.to_string() })
    }

    /// Stores one batch of rows (idempotent: see `PushRows` in hub.proto).
    pub async fn push_rows(&self, req: PushRowsRequest) -> Result<PushRowsReply, ClientError> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(self.request_timeout);
        let mut c = self.inner.clone();
        c.push_rows(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.request_timeout);
        r
    }

    /// Which of these blobs (SHA-256, hex) the hub lacks for `pipeline`.
    pub async fn missing_blobs(&self, pipeline: &str, sha256: Vec<String>) -> Result<Vec<String>, ClientError> {
        let r = self.request(MissingBlobsRequest { pipeline: pipeline.to_string(), sha256 });
        let mut c = self.inner.clone();
        c.missing_blobs(r).await.map(|r| r.into_inner().sha256).map_err(|s| status_error(&self.target, s))
    }

    /// Uploads one blob from `chunks` (the first carries its name, digest and length). No
    /// overall timeout: a large blob on a slow link takes what it takes; the connection's
    /// keepalive (`Timeouts::keepalive`) notices a dead peer.
    pub async fn put_blob(
        &self,
        chunks: impl tokio_stream::Stream<Item = BlobChunk> + Send + 'static,
    ) -> Result<bool, ClientError> {
        let mut c = self.inner.clone();
        c.put_blob(tonic::Request::new(chunks))
            .await
            .map(|r| r.into_inner().stored)
            .map_err(|s| status_error(&self.target, s))
    }

    /// Records a checkpoint whose blobs are stored; returns how many the hub keeps.
    pub async fn put_checkpoint(&self, index: CheckpointIndex) -> Result<u32, ClientError> {
        let mut c = self.inner.clone();
        c.put_checkpoint(self.request(index))
            .await
            .map(|r| r.into_inner().kept)
            .map_err(|s| status_error(&self.target, s))
    }

    pub async fn list_checkpoints(&self, gateway: &str, pipeline: &str) -> Result<Vec<CheckpointSummary>, ClientError> {
        let r = self.request(ListCheckpointsRequest { gateway: gateway.to_string(), pipeline: pipeline.to_string() });
        let mut c = self.inner.clone();
        c.list_checkpoints(r).await.map(|r| r.into_inner().checkpoints).map_err(|s| status_error(&self.target, s))
    }

    /// A kept checkpoint (the newest when `seq` is 0).
    pub async fn get_checkpoint(
        &self,
        gateway: &str,
        pipeline: &str,
        seq: u64,
    ) -> Result<CheckpointIndex, ClientError> {
        let r =
            self.request(GetCheckpointRequest { gateway: gateway.to_string(), pipeline: pipeline.to_string(), seq });
        let mut c = self.inner.clone();
        c.get_checkpoint(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    /// Streams a blob into `out` chunk by chunk; returns its length.
    pub async fn get_blob(
        &self,
        gateway: &str,
        pipeline: &str,
        sha256: &str,
        out: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
    ) -> Result<u64, ClientError> {
        let req =
            GetBlobRequest { gateway: gateway.to_string(), pipeline: pipeline.to_string(), sha256: sha256.to_string() };
        let mut c = self.inner.clone();
        let err = |s| status_error(&self.target, s);
        let mut stream = c.get_blob(tonic::Request::new(req)).await.map_err(err)?.into_inner();
        let mut n = 0u64;
        while let Some(chunk) = stream.message().await.map_err(err)? {
            out(&chunk.data).map_err(|e| ClientError::Io(format!("writing blob {sha256}: {e}")))?;
            n += chunk.data.len() as u64;
        }
        Ok(n)
    }

    /// Removes `gateway`'s rows of `stream` from outbox `outbox_id` numbered `from_seq` on.
    pub async fn retract_rows(
        &self,
        gateway: &str,
        stream: &str,
        outbox_id: u64,
        from_seq: u64,
    ) -> Result<RetractRowsReply, ClientError> {
        let r = self.request(RetractRowsRequest {
            gateway: gateway.to_string(),
            stream: stream.to_string(),
            outbox_id,
            from_seq,
        });
        let mut c = self.inner.clone();
        c.retract_rows(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    /// A new version of `group`'s pipelines (operators only).
    pub async fn put_desired(
        &self,
        group: &str,
        pipelines: Vec<PipelineFile>,
        config: &str,
        note: &str,
        reset_state: bool,
    ) -> Result<DesiredState, ClientError> {
        let r = self.request(PutDesiredRequest {
            group: group.to_string(),
            pipelines,
            note: note.to_string(),
            reset_state,
            config: config.to_string(),
        });
        let mut c = self.inner.clone();
        c.put_desired(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    /// A new version of `group` repeating version `to` (0: the one before the newest;
    /// operators only).
    pub async fn rollback_desired(&self, group: &str, to: u64, reset_state: bool) -> Result<DesiredState, ClientError> {
        let r = self.request(RollbackDesiredRequest { group: group.to_string(), to_version: to, reset_state });
        let mut c = self.inner.clone();
        c.rollback_desired(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    /// `group`'s versions below `before_version` (0: from the newest), newest first, without
    /// their SQL; `limit` 0 lets the hub choose (operators only).
    pub async fn list_desired(
        &self,
        group: &str,
        before_version: u64,
        limit: u32,
    ) -> Result<ListDesiredReply, ClientError> {
        let r = self.request(ListDesiredRequest { group: group.to_string(), before_version, limit });
        let mut c = self.inner.clone();
        c.list_desired(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    /// Version `version` of `group` whole (0: the newest; operators only).
    pub async fn get_desired(&self, group: &str, version: u64) -> Result<DesiredState, ClientError> {
        let r = self.request(GetDesiredRequest { group: group.to_string(), version });
        let mut c = self.inner.clone();
        c.get_desired(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    /// Follows `group` from `after_version`: the stream yields each newer version.
    pub async fn watch_desired(
        &self,
        group: &str,
        after_version: u64,
    ) -> Result<tonic::Streaming<DesiredState>, ClientError> {
        let r = tonic::Request::new(WatchDesiredRequest { group: group.to_string(), after_version });
        let mut c = self.inner.clone();
        c.watch_desired(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }

    pub async fn report_actual(&self, actual: ActualState) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        c.report_actual(self.request(actual)).await.map(|_| ()).map_err(|s| status_error(&self.target, s))
    }

    /// Every gateway's last report (of `group`, or all when empty) and the groups' versions.
    pub async fn fleet_status(&self, group: &str) -> Result<FleetStatusReply, ClientError> {
        let r = self.request(FleetStatusRequest { group: group.to_string() });
        let mut c = self.inner.clone();
        c.fleet_status(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub that took the connection and then went silent (a cut link: nothing closes the
    /// socket): an upload, which has no deadline, fails once a keepalive ping goes unanswered
    /// instead of waiting for TCP to give up.
    #[test]
    fn an_upload_to_a_silent_peer_fails_by_keepalive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // Accepts and holds connections, never reading or answering.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming() {
                held.push(s);
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let timeouts = Timeouts { keepalive: Duration::from_millis(500), ..Timeouts::default() };
        let outcome = rt.block_on(async {
            let c = HubClient::connect(&Target::Plain { address }, timeouts).await.unwrap();
            let chunk = BlobChunk { pipeline: "p".into(), sha256: "00".repeat(32), total_bytes: 1, data: vec![0] };
            tokio::time::timeout(Duration::from_secs(30), c.put_blob(tokio_stream::iter([chunk]))).await
        });
        match outcome {
            Ok(Err(_)) => {}
            Ok(Ok(stored)) => panic!("a silent peer stored a blob ({stored})"),
            Err(_) => panic!("the upload still waited on a silent peer after 30 s"),
        }
    }
}
