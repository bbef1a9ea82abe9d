//! Fleet desired state in the bucket: each group's pipelines as numbered versions, and each
//! gateway's last report of what it runs.
//!
//! `<prefix>fleet/groups/<group>/<version, 20 digits>.desired` — a `DesiredState`, written
//! create-only, so two operators deploying at once get two versions, never one overwriting the
//! other. Versions only grow: a rollback is a new version repeating an older one's pipelines.
//! `<prefix>fleet/gateways/<gateway>.actual` — an `ActualState`, overwritten at each report.
//!
//! Owns these keys; never decides who may write them (the service does).

use eddy_proto::v1::{ActualState, DesiredState, GroupVersion};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use prost::Message;

use crate::checkpoints::BucketError;
use crate::store::Bucket;

fn unavailable(e: impl std::fmt::Display) -> BucketError {
    BucketError::Unavailable(e.to_string())
}

fn group_dir(prefix: &str, group: &str) -> String {
    format!("{prefix}fleet/groups/{group}/")
}

fn version_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.strip_suffix(".desired")?.parse().ok()
}

/// Attempts at taking the next version number when another operator takes it first.
const PUT_ATTEMPTS: usize = 8;

impl Bucket {
    /// The versions kept for `group`, oldest first.
    async fn desired_versions(&self, group: &str) -> Result<Vec<u64>, BucketError> {
        let prefix = ObjectPath::from(group_dir(&self.prefix, group));
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(unavailable)?;
        let mut v: Vec<u64> = metas.iter().filter_map(|m| version_of(m.location.as_ref())).collect();
        v.sort_unstable();
        Ok(v)
    }

    async fn read_desired(&self, group: &str, version: u64) -> Result<DesiredState, BucketError> {
        let key = format!("{}{version:020}.desired", group_dir(&self.prefix, group));
        let body = match self.store.get(&ObjectPath::from(key.as_str())).await {
            Ok(r) => r.bytes().await.map_err(unavailable)?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BucketError::NotFound(format!("group {group} has no version {version}")))
            }
            Err(e) => return Err(unavailable(e)),
        };
        DesiredState::decode(body).map_err(|e| BucketError::Unavailable(format!("{key} is damaged: {e}")))
    }

    /// The newest version of `group`, if any.
    pub async fn newest_desired(&self, group: &str) -> Result<Option<DesiredState>, BucketError> {
        match self.desired_versions(group).await?.last() {
            Some(&v) => self.read_desired(group, v).await.map(Some),
            None => Ok(None),
        }
    }

    /// Stores `d` as the group's next version; returns it with its number.
    pub async fn put_desired(&self, mut d: DesiredState) -> Result<DesiredState, BucketError> {
        for _ in 0..PUT_ATTEMPTS {
            let next = self.desired_versions(&d.group).await?.last().map_or(1, |v| v + 1);
            d.version = next;
            let key = format!("{}{next:020}.desired", group_dir(&self.prefix, &d.group));
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self.store.put_opts(&ObjectPath::from(key), PutPayload::from(d.encode_to_vec()), opts).await {
                Ok(_) => return Ok(d),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(BucketError::Unavailable(format!("group {}: versions kept being taken; try again", d.group)))
    }

    /// Versions of `group` below `before` (0: from the newest), newest first, at most `limit`;
    /// and whether older ones remain.
    pub async fn list_desired(
        &self,
        group: &str,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<DesiredState>, bool), BucketError> {
        let versions = self.desired_versions(group).await?;
        let mut below = versions.iter().rev().filter(|&&v| before == 0 || v < before);
        let mut out = Vec::new();
        for &v in below.by_ref().take(limit) {
            out.push(self.read_desired(group, v).await?);
        }
        Ok((out, below.next().is_some()))
    }

    /// Version `version` of `group` (0: the newest).
    pub async fn get_desired(&self, group: &str, version: u64) -> Result<DesiredState, BucketError> {
        if version > 0 {
            return self.read_desired(group, version).await;
        }
        self.newest_desired(group).await?.ok_or_else(|| BucketError::NotFound(format!("group {group} has no versions")))
    }

    /// Version `to` of `group` for a rollback (0: the one before the newest).
    pub async fn rollback_source(&self, group: &str, to: u64) -> Result<DesiredState, BucketError> {
        let v = self.desired_versions(group).await?;
        match (v.len(), to) {
            (0, _) => Err(BucketError::NotFound(format!("group {group} has no versions"))),
            (1, 0) => Err(BucketError::Invalid(format!("group {group} has one version only: nothing to roll back to"))),
            (n, 0) => self.read_desired(group, v[n - 2]).await,
            (n, to) if to >= v[n - 1] => Err(BucketError::Invalid(format!(
                "version {to} is not older than group {group}'s newest ({})",
                v[n - 1]
            ))),
            (_, to) => self.read_desired(group, to).await,
        }
    }

    pub async fn put_actual(&self, a: &ActualState) -> Result<(), BucketError> {
        let key = format!("{}fleet/gateways/{}.actual", self.prefix, a.gateway);
        self.store.put(&ObjectPath::from(key), PutPayload::from(a.encode_to_vec())).await.map_err(unavailable)?;
        Ok(())
    }

    /// Every gateway's last report (of `group`, or all), and the groups' newest versions.
    pub async fn fleet_status(
        &self,
        group: Option<&str>,
    ) -> Result<(Vec<ActualState>, Vec<GroupVersion>), BucketError> {
        let prefix = ObjectPath::from(format!("{}fleet/gateways", self.prefix));
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(unavailable)?;
        let mut gateways = Vec::new();
        for m in metas.iter().filter(|m| m.location.as_ref().ends_with(".actual")) {
            let body = self.store.get(&m.location).await.map_err(unavailable)?.bytes().await.map_err(unavailable)?;
            let a = ActualState::decode(body).map_err(|e| unavailable(format!("{}: {e}", m.location)))?;
            if group.is_none_or(|g| g == a.group) {
                gateways.push(a);
            }
        }
        gateways.sort_by(|a, b| (&a.group, &a.gateway).cmp(&(&b.group, &b.gateway)));
        let mut groups: Vec<String> = gateways.iter().map(|a| a.group.clone()).collect();
        if let Some(g) = group {
            groups.push(g.to_string());
        } else {
            let prefix = ObjectPath::from(format!("{}fleet/groups", self.prefix));
            let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(unavailable)?;
            groups.extend(metas.iter().filter_map(|m| m.location.as_ref().split('/').rev().nth(1).map(str::to_string)));
        }
        groups.sort();
        groups.dedup();
        let mut versions = Vec::new();
        for g in groups.into_iter().filter(|g| !g.is_empty()) {
            let version = self.desired_versions(&g).await?.last().copied().unwrap_or(0);
            versions.push(GroupVersion { group: g, version });
        }
        Ok((gateways, versions))
    }
}
