//! The `eddy.v1.Hub` service: checks a push against its gateway's identity and the limits, then
//! stores it through the [`Bucket`]. Holds no state of its own between calls, so any number of
//! hubs can serve one fleet. Owns the mapping from failures to gRPC codes: the gateway's fault is
//! INVALID_ARGUMENT / PERMISSION_DENIED (retrying will not help), the store's is UNAVAILABLE.

use std::sync::Arc;

use eddy_proto::v1::hub_server::Hub;
use eddy_proto::v1::{PushRowsReply, PushRowsRequest};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::config::Limits;
use crate::parquet_batch::{self, Origin};
use crate::store::{Bucket, StoreError};
use crate::{identity, layout};

pub struct HubService {
    pub bucket: Arc<Bucket>,
    pub limits: Limits,
    /// Pushes in progress, at most `limits.max_concurrent_pushes`.
    pub pushes: Arc<Semaphore>,
}

impl HubService {
    pub fn new(bucket: Arc<Bucket>, limits: Limits) -> HubService {
        let pushes = Arc::new(Semaphore::new(limits.max_concurrent_pushes));
        HubService { bucket, limits, pushes }
    }
}

/// The caller's gateway id, from the certificate TLS verified.
fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a gateway certificate is required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a gateway certificate is required"))?;
    identity::gateway_of(leaf).map_err(Status::permission_denied)
}

#[tonic::async_trait]
impl Hub for HubService {
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
