//! `eddy-client`: a typed client of eddyd's management API (`eddy.v1.Control`). It connects
//! over the local Unix socket (the caller is known by its uid) or over TCP with mutual TLS, and
//! retries only what is safe to retry (reads, on transport errors). Owns connections and
//! retries; never interprets replies (that is the caller's job). [`HubClient`] is the same for
//! the fleet's hub (`eddy.v1.Hub`).

mod hub;
mod target;

pub use eddy_proto::v1;
pub use hub::{HubClient, BLOB_CHUNK_BYTES};
pub use target::{Target, TlsFiles, DEFAULT_SOCKET};
pub use tonic::{Code, Status};

use std::time::Duration;

use eddy_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon (or hub) could not be reached (socket missing, refused, TLS handshake failed).
    #[error("cannot reach {target}: {why}")]
    Connect { target: String, why: String },
    /// A certificate or key file could not be read.
    #[error("{0}")]
    Files(String),
    /// The daemon answered with an error (shown as its message: the code is in `code()`).
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// A local file could not be written (what a download was being saved to).
    #[error("{0}")]
    Io(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

impl ClientError {
    /// The gRPC status code (`Unavailable` for connection failures).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Connect { .. } => Code::Unavailable,
            ClientError::Files(_) => Code::InvalidArgument,
            ClientError::Io(_) => Code::Internal,
            ClientError::Status(s) => s.code(),
        }
    }
}

/// Largest reply accepted (a query's answer is bounded by the daemon's api.query_max_bytes).
const MAX_REPLY_BYTES: usize = 256 << 20;

/// How long to wait: to connect, and for a reply (deploys wait for the pipeline to start).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
    /// Extra attempts for reads that failed on the transport.
    pub read_retries: u32,
    /// TCP connections are pinged (HTTP/2 PING) this often, idle or not, and fail when a ping is
    /// not answered within as long again: a peer gone without closing the connection (a cut
    /// link, a hub powered off) then fails calls within twice this, also calls without a
    /// deadline (uploads, watches, tails), instead of hanging until TCP gives up.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(120),
            read_retries: 2,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// A connection to one eddyd.
#[derive(Clone)]
pub struct Client {
    inner: ControlClient<Channel>,
    timeouts: Timeouts,
    target: String,
}

macro_rules! read_call {
    ($(#[$m:meta])* $fn:ident, $req:ty, $rep:ty) => {
        $(#[$m])*
        pub async fn $fn(&self, req: $req) -> Result<$rep, ClientError> {
            let mut attempt = 0;
            loop {
                let mut c = self.inner.clone();
                match c.$fn(self.request(req.clone())).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if retryable(&s) && attempt < self.timeouts.read_retries => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    Err(s) => return Err(self.error(s)),
                }
            }
        }
    };
}

macro_rules! write_call {
    ($(#[$m:meta])* $fn:ident, $req:ty, $rep:ty) => {
        $(#[$m])*
        pub async fn $fn(&self, req: $req) -> Result<$rep, ClientError> {
            let mut c = self.inner.clone();
            c.$fn(self.request(req)).await.map(|r| r.into_inner()).map_err(|s| self.error(s))
        }
    };
}

/// Transport failures before the daemon acted; never an answer of the daemon's own.
fn retryable(s: &Status) -> bool {
    s.code() == Code::Unavailable || connection_failed(s)
}

/// Whether the connection failed or closed under the call: such a status is made by the local
/// transport, which puts the error it met in the status's source, while a status the daemon sent
/// has none. Depending on when the connection died (a certificate refused right after a TLS 1.3
/// handshake, a daemon that exited) tonic reports it as `Unknown`, `Unavailable` or `Cancelled`.
/// A request timeout also has a source but is not a connection failure.
fn connection_failed(s: &Status) -> bool {
    let Some(mut e) = std::error::Error::source(s) else { return false };
    loop {
        if e.is::<tonic::TimeoutExpired>() {
            return false;
        }
        match e.source() {
            Some(next) => e = next,
            None => return true,
        }
    }
}

/// A call's failure: a connection failure (the peer refused this client's certificate after the
/// handshake, say) is not an answer of the peer's.
pub(crate) fn status_error(target: &str, s: Status) -> ClientError {
    if connection_failed(&s) {
        let why = target::error_chain(std::error::Error::source(&s).unwrap_or(&s));
        return ClientError::Connect { target: target.to_string(), why };
    }
    ClientError::Status(s)
}

impl Client {
    /// Connects (the connection is made now, so a wrong address fails here).
    pub async fn connect(target: &Target, timeouts: Timeouts) -> Result<Client, ClientError> {
        let channel = target.connect(&timeouts).await?;
        // Query answers may be larger than tonic's 4 MiB default; the daemon bounds them.
        let inner = ControlClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(Client { inner, timeouts, target: target.to_string() })
    }

    /// A call that failed on the connection (the daemon refused this client's certificate
    /// after the handshake, say) is a connection failure, not an answer of the daemon's.
    fn error(&self, s: Status) -> ClientError {
        status_error(&self.target, s)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeouts.request);
        r
    }

    read_call!(status, v1::StatusRequest, v1::StatusReply);
    read_call!(list_pipelines, v1::ListPipelinesRequest, v1::ListPipelinesReply);
    read_call!(get_pipeline, v1::PipelineRef, v1::PipelineDetail);
    read_call!(validate, v1::ValidateRequest, v1::ValidateReply);
    read_call!(get_config, v1::GetConfigRequest, v1::ConfigReply);
    read_call!(read_audit, v1::ReadAuditRequest, v1::ReadAuditReply);
    read_call!(who_am_i, v1::WhoAmIRequest, v1::WhoAmIReply);
    read_call!(
        /// A one-off SELECT over a materialized view's current rows.
        query, v1::QueryRequest, v1::QueryReply
    );
    write_call!(
        /// Not retried: a deploy that reached the daemon may have been applied.
        deploy, v1::DeployRequest, v1::DeployReply
    );
    write_call!(pause, v1::PipelineRef, v1::ActionReply);
    write_call!(resume, v1::PipelineRef, v1::ActionReply);
    write_call!(delete, v1::DeleteRequest, v1::ActionReply);
    write_call!(restore, v1::RestoreRequest, v1::RestoreReply);
    write_call!(checkpoint, v1::PipelineRef, v1::ActionReply);
    write_call!(reload, v1::ReloadRequest, v1::ReloadReply);

    /// A live copy of a sink's output; the stream ends at the request's row or time budget.
    /// Not bounded by the request timeout (a tap runs as long as it asks to).
    pub async fn tap(&self, req: v1::TapRequest) -> Result<tonic::Streaming<v1::TapEvent>, ClientError> {
        let mut c = self.inner.clone();
        c.tap(tonic::Request::new(req)).await.map(|r| r.into_inner()).map_err(|s| self.error(s))
    }

    /// The next event of a tap (`None` at its end).
    pub async fn next_tap_event(
        &self,
        stream: &mut tonic::Streaming<v1::TapEvent>,
    ) -> Result<Option<v1::TapEvent>, ClientError> {
        stream.message().await.map_err(|s| self.error(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_statuses_made_by_a_failed_connection_count_as_connection_failures() {
        // What the daemon sends carries no source.
        assert!(!connection_failed(&Status::cancelled("stopped")));
        assert!(!connection_failed(&Status::unavailable("queue full")));
        // A connection closed under the call, whatever code tonic gives it.
        let closed = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let s = Status::from_error(Box::new(closed));
        assert!(connection_failed(&s) && retryable(&s), "{s:?}");
        // A request timeout is not a connection failure.
        let s = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(s.code(), Code::Cancelled);
        assert!(!connection_failed(&s) && !retryable(&s));
    }
}
