//! `eddyctl fleet …`: a group's versions at the hub and what its gateways run. Owns the fleet
//! subcommands and their output; never talks to a daemon (only to the hub it is given).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use eddy_client::{v1, HubClient};

use crate::render;

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Every gateway's last report: group, version, last seen, backlog, failing pipelines.
    Status {
        /// Only this group's gateways.
        #[arg(long)]
        group: Option<String>,
    },
    /// Make exactly these pipeline files the group's next version; its gateways apply it (a
    /// pipeline of the current version that is not given is stopped there, its state kept).
    Deploy {
        /// Pipeline files (each runs under its file name without .sql).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The group of gateways (`[hub.fleet] group` in their config).
        #[arg(long)]
        group: String,
        /// A config fragment (TOML: [mqtt], [kafka], [limits], [checkpoint], [wal]) laid over
        /// each gateway's config for these pipelines; a version without one removes the last.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A note kept with the version.
        #[arg(long, default_value = "")]
        note: String,
        /// A pipeline whose new query cannot continue from its running state starts afresh
        /// (without this, gateways refuse such a version and keep the running one).
        #[arg(long)]
        reset_state: bool,
    },
    /// Make an older version's pipelines the group's next version.
    Rollback {
        /// The group of gateways.
        #[arg(long)]
        group: String,
        /// The version to go back to (default: the one before the newest).
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// As for deploy: state the older query cannot continue from is dropped.
        #[arg(long)]
        reset_state: bool,
    },
    /// A group's versions, newest first: when, by whom, its pipelines, what each changed.
    History {
        /// The group of gateways.
        #[arg(long)]
        group: String,
        /// How many versions (the hub gives at most 100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
    },
    /// One version of a group whole: its pipelines' SQL and its config fragment.
    Show {
        /// The group of gateways.
        #[arg(long)]
        group: String,
        /// The version (default: the newest).
        #[arg(long, default_value_t = 0)]
        version: u64,
        /// Print only this pipeline's SQL, as a file to deploy again.
        #[arg(long)]
        pipeline: Option<String>,
    },
}

/// What a version changes against the one before it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    /// Same name, other SQL.
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub config_changed: bool,
}

impl Changes {
    /// Between two versions given as (name, SQL or its digest) pairs and their config (or its
    /// digest).
    pub fn between(
        before: &[(&str, &str)],
        after: &[(&str, &str)],
        config_before: &str,
        config_after: &str,
    ) -> Changes {
        let find = |set: &[(&str, &str)], name: &str| set.iter().find(|(n, _)| *n == name).map(|(_, s)| s.to_string());
        let mut c = Changes { config_changed: config_before != config_after, ..Changes::default() };
        for (name, sql) in after {
            match find(before, name) {
                None => c.added.push(name.to_string()),
                Some(old) if old != *sql => c.changed.push(name.to_string()),
                Some(_) => {}
            }
        }
        c.removed = before.iter().filter(|(n, _)| find(after, n).is_none()).map(|(n, _)| n.to_string()).collect();
        c
    }

    /// One line: "adds a; changes b; removes c (stopped on the gateways, state kept)".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (verb, names) in [("adds", &self.added), ("changes", &self.changed), ("removes", &self.removed)] {
            if !names.is_empty() {
                parts.push(format!("{verb} {}", names.join(", ")));
            }
        }
        if !self.removed.is_empty() {
            let last = parts.len() - 1;
            parts[last].push_str(" (stopped on the gateways, state kept)");
        }
        if self.config_changed {
            parts.push("changes the config fragment".into());
        }
        if parts.is_empty() {
            "no change".into()
        } else {
            parts.join("; ")
        }
    }
}

fn pairs(d: &v1::DesiredState) -> Vec<(&str, &str)> {
    d.pipelines.iter().map(|p| (p.name.as_str(), p.sql.as_str())).collect()
}

fn digests(s: &v1::DesiredSummary) -> Vec<(&str, &str)> {
    s.pipelines.iter().map(|p| (p.name.as_str(), p.sql_sha256.as_str())).collect()
}

/// Runs a fleet command against `hub`; `json` prints replies as JSON.
pub async fn run(hub: &HubClient, cmd: &FleetCmd, json: bool) -> Result<()> {
    match cmd {
        FleetCmd::Status { group } => {
            let r = hub.fleet_status(group.as_deref().unwrap_or("")).await?;
            if json {
                return crate::print_json(&r);
            }
            print_status(&r);
            Ok(())
        }
        FleetCmd::Deploy { files, group, config, note, reset_state } => {
            let mut pipelines = Vec::new();
            for f in files {
                let (sql, name) = crate::read_sql(f, &None)?;
                pipelines.push(v1::PipelineFile { name, sql });
            }
            let config = match config {
                Some(f) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
                None => String::new(),
            };
            let d = hub.put_desired(group, pipelines, &config, note, *reset_state).await?;
            published(hub, &d, json).await
        }
        FleetCmd::Rollback { group, to, reset_state } => {
            let d = hub.rollback_desired(group, *to, *reset_state).await?;
            published(hub, &d, json).await
        }
        FleetCmd::History { group, limit } => {
            // One more than shown: the oldest shown is compared with the one before it.
            let r = hub.list_desired(group, 0, limit.saturating_add(1)).await?;
            if json {
                return crate::print_json(&r);
            }
            let shown = r.versions.len().min(*limit as usize);
            if shown == 0 {
                println!("group {group} has no versions");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r.versions[..shown]
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let changes = match r.versions.get(i + 1) {
                        Some(before) => {
                            Changes::between(&digests(before), &digests(v), &before.config_sha256, &v.config_sha256)
                                .describe()
                        }
                        None if r.more => "-".into(),
                        None => "first version".into(),
                    };
                    let names: Vec<&str> = v.pipelines.iter().map(|p| p.name.as_str()).collect();
                    vec![
                        v.version.to_string(),
                        render::utc(v.created_ms),
                        v.created_by.clone(),
                        names.join(", "),
                        changes,
                        v.note.clone(),
                    ]
                })
                .collect();
            println!("{}", render::table(&["VERSION", "CREATED (UTC)", "BY", "PIPELINES", "CHANGES", "NOTE"], &rows));
            if r.versions.len() > shown || r.more {
                println!("(older versions not shown: --limit)");
            }
            Ok(())
        }
        FleetCmd::Show { group, version, pipeline } => {
            let d = hub.get_desired(group, *version).await?;
            if let Some(name) = pipeline {
                let p = d.pipelines.iter().find(|p| &p.name == name).ok_or_else(|| {
                    let names: Vec<&str> = d.pipelines.iter().map(|p| p.name.as_str()).collect();
                    crate::ReplyFailure::NotFound(format!(
                        "version {} of group {group} has no pipeline {name} (it has: {})",
                        d.version,
                        names.join(", ")
                    ))
                })?;
                print!("{}", p.sql);
                return Ok(());
            }
            if json {
                return crate::print_json(&d);
            }
            print_version(&d);
            Ok(())
        }
    }
}

/// A version just published: what it is and what it changes against the one before.
async fn published(hub: &HubClient, d: &v1::DesiredState, json: bool) -> Result<()> {
    if json {
        return crate::print_json(d);
    }
    let names: Vec<&str> = d.pipelines.iter().map(|p| p.name.as_str()).collect();
    let config = if d.config.is_empty() { "" } else { "; with a config fragment" };
    println!("group {}: version {} ({}){config}", d.group, d.version, names.join(", "));
    // Versions are numbered without gaps, so the one before is version - 1.
    if d.version > 1 {
        match hub.get_desired(&d.group, d.version - 1).await {
            Ok(before) => {
                let c = Changes::between(&pairs(&before), &pairs(d), &before.config, &d.config);
                println!("against version {}: {}", before.version, c.describe());
            }
            Err(e) => println!("(what it changes is unknown: {e})"),
        }
    }
    Ok(())
}

fn print_version(d: &v1::DesiredState) {
    let mut head =
        format!("group {} version {}, by {} at {} UTC", d.group, d.version, d.created_by, render::utc(d.created_ms));
    if d.rolled_back_to > 0 {
        head.push_str(&format!(", repeating version {}", d.rolled_back_to));
    }
    if d.reset_state {
        head.push_str(", --reset-state");
    }
    println!("{head}");
    if !d.note.is_empty() {
        println!("note: {}", d.note);
    }
    if !d.config.is_empty() {
        println!("\n# config fragment\n{}", d.config.trim_end());
    }
    for p in &d.pipelines {
        println!("\n-- pipeline {}\n{}", p.name, p.sql.trim_end());
    }
}

/// The fleet line of `eddyctl status`: "fleet: group plant-a, version 4 applied, hub connected".
pub fn link_line(f: &v1::FleetLink) -> String {
    let applied = match f.applied_version {
        0 => "no version applied yet".to_string(),
        v => format!("version {v} applied"),
    };
    let refused = match f.rejected_version {
        0 => String::new(),
        v => format!(", version {v} refused: {}", f.rejected_reason),
    };
    let hub = if f.hub_connected { "hub connected" } else { "hub unreachable (retrying)" };
    format!("fleet: group {}, {applied}{refused}; {hub}", f.group)
}

/// How many pipelines a gateway runs, and how many of them are not running: "3 (1 paused)".
fn pipeline_counts(pipelines: &[v1::PipelineActual]) -> String {
    let mut not_running: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for p in pipelines.iter().filter(|p| p.state != "running") {
        *not_running.entry(p.state.as_str()).or_default() += 1;
    }
    if not_running.is_empty() {
        return pipelines.len().to_string();
    }
    let states: Vec<String> = not_running.iter().map(|(state, n)| format!("{n} {state}")).collect();
    format!("{} ({})", pipelines.len(), states.join(", "))
}

fn print_status(r: &v1::FleetStatusReply) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let rows: Vec<Vec<String>> = r
        .gateways
        .iter()
        .map(|g| {
            let want = r.groups.iter().find(|v| v.group == g.group).map_or(0, |v| v.version);
            let version = if g.rejected_version > 0 {
                format!("{} (refused {})", g.applied_version, g.rejected_version)
            } else if g.applied_version < want {
                format!("{} (→ {want})", g.applied_version)
            } else {
                g.applied_version.to_string()
            };
            let failing: Vec<String> = g
                .pipelines
                .iter()
                .filter(|p| p.state == "failed" || p.state == "start-failed")
                .map(|p| format!("{}: {}", p.name, p.error))
                .chain((g.rejected_version > 0).then(|| g.rejected_reason.clone()))
                .collect();
            vec![
                g.gateway.clone(),
                g.group.clone(),
                version,
                render::ago(Some(now.saturating_sub(g.reported_ms).max(0) as u64)),
                pipeline_counts(&g.pipelines),
                render::bytes(g.backlog_bytes),
                if failing.is_empty() { "-".into() } else { failing.join("; ") },
            ]
        })
        .collect();
    println!("{}", render::table(&["GATEWAY", "GROUP", "VERSION", "SEEN", "PIPELINES", "BACKLOG", "FAILING"], &rows));
    for v in &r.groups {
        println!("group {}: newest version {}", v.group, v.version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_line_says_applied_refused_and_the_link() {
        let mut f =
            v1::FleetLink { group: "plant-a".into(), applied_version: 4, hub_connected: true, ..Default::default() };
        assert_eq!(link_line(&f), "fleet: group plant-a, version 4 applied; hub connected");
        (f.rejected_version, f.rejected_reason, f.hub_connected) = (5, "pipeline x: bad".into(), false);
        assert_eq!(
            link_line(&f),
            "fleet: group plant-a, version 4 applied, version 5 refused: pipeline x: bad; hub unreachable (retrying)"
        );
    }

    #[test]
    fn pipeline_counts_name_the_ones_not_running() {
        let p = |state: &str| v1::PipelineActual { name: "p".into(), state: state.into(), error: String::new() };
        assert_eq!(pipeline_counts(&[p("running"), p("running")]), "2");
        assert_eq!(pipeline_counts(&[p("running"), p("paused"), p("start-failed")]), "3 (1 paused, 1 start-failed)");
        assert_eq!(pipeline_counts(&[]), "0");
    }

    #[test]
    fn changes_name_what_a_version_adds_changes_and_removes() {
        let before = [("plant", "SELECT 1"), ("old", "SELECT 2")];
        let after = [("plant", "SELECT 10"), ("alerts", "SELECT 3")];
        let c = Changes::between(&before, &after, "", "");
        assert_eq!(c.added, ["alerts"]);
        assert_eq!(c.changed, ["plant"]);
        assert_eq!(c.removed, ["old"]);
        assert_eq!(c.describe(), "adds alerts; changes plant; removes old (stopped on the gateways, state kept)");
        assert_eq!(Changes::between(&before, &before, "a", "a").describe(), "no change");
        assert_eq!(Changes::between(&before, &before, "", "x").describe(), "changes the config fragment");
    }
}
