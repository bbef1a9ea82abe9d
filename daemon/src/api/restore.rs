//! `Restore` on a running eddyd (`eddyctl restore`): the steps of `crate::restore_cmd` around a
//! pipeline the runtime holds paused. Owns their order and what the caller is told when one
//! fails; the download runs here, on the API's runtime, so the supervisor never waits on the
//! network. Never touches a pipeline's state directory itself: the runtime swaps it.
//!
//! Order: hold (pause, plan the SQL) → fetch → rebuild → check the backup fits the SQL →
//! retract at the hub → end (the runtime deletes the replaced state, installs the restored
//! one and starts the pipeline). Up to the retraction a failure leaves the pipeline paused on
//! its own state; from it on, the old state must not run again and the caller is told to run
//! the restore again, which repeats every step idempotently.

use eddy_proto::v1::{RestoreReply, RestoreRequest};
use tonic::Status;

use super::service::ask;
use super::Shared;
use crate::control::Command;
use crate::restore_cmd::{self, Staged};

/// A failure of the restore's own steps as a status: the hub's code when it answered.
fn failed(e: anyhow::Error) -> Status {
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<eddy_client::ClientError>())
        .map_or(tonic::Code::FailedPrecondition, |c| c.code());
    Status::new(code, format!("{e:#}"))
}

/// Steps 1–3; `Err` says whether the hub was changed already (the retraction had begun). The
/// caller removes the staging directory after any failure.
async fn stage_and_retract(
    shared: &Shared,
    req: &RestoreRequest,
    fingerprint: Vec<u8>,
) -> Result<(Staged, Vec<String>), (Status, bool)> {
    let state = shared.state.as_ref().ok_or((Status::failed_precondition("no state dir"), false))?;
    let link = shared
        .hub
        .as_ref()
        .map_err(|m| (Status::failed_precondition(format!("a restore comes from the hub: {m}")), false))?;
    let what = restore_cmd::RestoreRequest { gateway: &req.gateway, pipeline: &req.pipeline, seq: req.checkpoint_seq };
    let fetched = restore_cmd::fetch(link, &state.dir, what).await.map_err(|e| (failed(e), false))?;
    let cipher = state.cipher.clone();
    let staged = tokio::task::spawn_blocking(move || fetched.rebuild(cipher))
        .await
        .map_err(|e| (Status::internal(format!("the rebuild did not finish: {e}")), false))?
        .map_err(|e| (failed(e), false))?;
    if staged.copy.fingerprint != fingerprint {
        let seq = staged.copy.seq;
        return Err((
            Status::failed_precondition(format!(
                "checkpoint {seq} of {}/{} was taken with other SQL than pipeline {} runs now: deploy the SQL the backup was taken with, then restore",
                req.gateway, req.pipeline, req.pipeline
            )),
            false,
        ));
    }
    let replaced = state.dir.join(&req.pipeline);
    let replaced = replaced.exists().then_some(replaced);
    match staged.retract(&state.cipher, replaced.as_deref()).await {
        Ok(steps) => Ok((staged, steps)),
        Err(e) => Err((failed(e), true)),
    }
}

/// Replaces `req.pipeline`'s state with the backup `req` names, and starts it from there.
pub async fn from_hub(shared: &Shared, req: &RestoreRequest) -> Result<RestoreReply, Status> {
    if req.gateway.is_empty() {
        return Err(Status::invalid_argument("gateway: the gateway whose backup to restore"));
    }
    restore_cmd::check_pipeline_name(&req.pipeline).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
    if shared.state.is_none() {
        return Err(Status::failed_precondition("eddyd runs without a state dir: there is no state to restore"));
    }
    let name = req.pipeline.clone();
    let fingerprint = ask(shared, |reply| Command::HoldForRestore { name: name.clone(), reply }).await?;
    match stage_and_retract(shared, req, fingerprint).await {
        Ok((staged, mut steps)) => {
            let staging = staged.staging_dir().to_path_buf();
            let (seq, created_ms, bytes) = (staged.copy.seq, staged.copy.created_ms, staged.bytes());
            steps.push(staged.summary());
            drop(staged);
            steps.push(ask(shared, |reply| Command::EndRestore { name, staging: Some(staging), reply }).await?);
            Ok(RestoreReply { checkpoint_seq: seq, created_ms, bytes, steps })
        }
        Err((status, hub_changed)) => {
            if let Some(state) = &shared.state {
                // What a failed step left (best effort: the next restore empties it anyway).
                let _ = std::fs::remove_dir_all(restore_cmd::staging_dir(&state.dir, &req.pipeline));
            }
            let ended = ask(shared, |reply| Command::EndRestore { name, staging: None, reply }).await;
            let then = match (hub_changed, ended) {
                (false, Ok(m)) => m,
                (true, Ok(_)) => format!(
                    "pipeline {} stays paused; the hub already lacks rows of its old state: run the restore again (do not resume it)",
                    req.pipeline
                ),
                (_, Err(e)) => e.message().to_string(),
            };
            Err(Status::new(status.code(), format!("{}; {then}", status.message())))
        }
    }
}
