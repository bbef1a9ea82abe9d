//! A client of the fleet's hub (`eddy.v1.Hub`), over mutual TLS: the hub knows a gateway by its
//! certificate. Owns the connection; never retries a push itself (the caller's outbox does, and
//! a push sent twice is stored once).

use std::time::Duration;

use eddy_proto::v1::hub_client::HubClient as RawHubClient;
use eddy_proto::v1::{PushRowsReply, PushRowsRequest};
use tonic::transport::Channel;

use crate::{status_error, ClientError, Target, Timeouts};

/// Largest request the hub is sent (a batch is bounded by the sink's batch_bytes).
const MAX_REQUEST_BYTES: usize = 256 << 20;

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
        let channel = target.connect(timeouts.connect).await?;
        let inner = RawHubClient::new(channel).max_encoding_message_size(MAX_REQUEST_BYTES);
        Ok(HubClient { inner, request_timeout: timeouts.request, target: target.to_string() })
    }

    /// Stores one batch of rows (idempotent: see `PushRows` in hub.proto).
    pub async fn push_rows(&self, req: PushRowsRequest) -> Result<PushRowsReply, ClientError> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(self.request_timeout);
        let mut c = self.inner.clone();
        c.push_rows(r).await.map(|r| r.into_inner()).map_err(|s| status_error(&self.target, s))
    }
}
