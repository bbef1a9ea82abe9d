//! Who may do what: principals, roles and `[[access.grant]]` rules. Owns the decision only;
//! never sees a connection (the listener names the principal) and never writes the audit log.

use anyhow::{bail, Result};

use crate::config::Grant;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Status, pipelines, config, taps, queries.
    Viewer,
    /// + deploy, pause, resume, checkpoint, reload.
    Operator,
    /// + delete, audit, access and key changes.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role> {
        Ok(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => bail!("access.grant: unknown role '{s}' (viewer, operator or admin)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// One rule: these principals have this role on these pipelines.
#[derive(Debug, Clone)]
struct Rule {
    principals: Vec<String>,
    role: Role,
    /// Empty: every pipeline.
    pipelines: Vec<String>,
}

/// The roles callers have. Root and the daemon's own user are always admins over the socket;
/// without any configured grant, every other local user that can open the socket (mode 0660:
/// its group) is a viewer. TLS and plaintext TCP callers have no role unless granted one. The
/// default policy gives nobody a role (it stands until the configured one is installed).
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    rules: Vec<Rule>,
}

/// A caller's standing: the highest role of every rule that names it, per pipeline.
#[derive(Debug, Clone)]
pub struct Standing {
    grants: Vec<(Role, Vec<String>)>,
}

impl Standing {
    /// The role the caller has for `pipeline` (`None`: a call not about one pipeline, which
    /// counts only unscoped grants).
    pub fn role_for(&self, pipeline: Option<&str>) -> Option<Role> {
        self.grants
            .iter()
            .filter(|(_, pats)| match pipeline {
                None => pats.is_empty(),
                Some(p) => pats.is_empty() || pats.iter().any(|pat| glob(pat, p)),
            })
            .map(|(r, _)| *r)
            .max()
    }

    /// The highest role, and the patterns it is scoped to (for `WhoAmI`).
    pub fn best(&self) -> Option<(Role, Vec<String>)> {
        let top = self.grants.iter().map(|(r, _)| *r).max()?;
        if self.grants.iter().any(|(r, p)| *r == top && p.is_empty()) {
            return Some((top, Vec::new()));
        }
        let pats = self.grants.iter().filter(|(r, _)| *r == top).flat_map(|(_, p)| p.clone()).collect();
        Some((top, pats))
    }
}

impl AccessPolicy {
    pub fn new(grants: &[Grant], own_uid: u32) -> Result<AccessPolicy> {
        let mut rules = vec![Rule {
            principals: vec!["uid:0".into(), format!("uid:{own_uid}")],
            role: Role::Admin,
            pipelines: vec![],
        }];
        if grants.is_empty() {
            rules.push(Rule { principals: vec!["uid:*".into()], role: Role::Viewer, pipelines: vec![] });
        }
        for g in grants {
            rules.push(Rule {
                principals: g.principals.clone(),
                role: Role::parse(&g.role)?,
                pipelines: g.pipelines.clone(),
            });
        }
        Ok(AccessPolicy { rules })
    }

    /// What a caller known by these names (`uid:1000` and `user:ops`, say) may do.
    pub fn standing(&self, names: &[String]) -> Standing {
        let grants = self
            .rules
            .iter()
            .filter(|r| r.principals.iter().any(|pat| names.iter().any(|n| glob(pat, n))))
            .map(|r| (r.role, r.pipelines.clone()))
            .collect();
        Standing { grants }
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(principals: &[&str], role: &str, pipelines: &[&str]) -> Grant {
        Grant {
            principals: principals.iter().map(|s| s.to_string()).collect(),
            role: role.into(),
            pipelines: pipelines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("line-*", "line-3"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYc"));
        assert!(!glob("a*b", "aXXc"));
        assert!(!glob("line-*", "lines"));
        assert!(glob("cert:*.ops.example", "cert:gw1.ops.example"));
    }

    #[test]
    fn defaults_make_root_and_self_admins_and_other_local_users_viewers() {
        let p = AccessPolicy::new(&[], 999).unwrap();
        assert_eq!(p.standing(&["uid:0".into()]).role_for(None), Some(Role::Admin));
        assert_eq!(p.standing(&["uid:999".into()]).role_for(Some("x")), Some(Role::Admin));
        assert_eq!(p.standing(&["uid:1000".into(), "user:bob".into()]).role_for(None), Some(Role::Viewer));
        assert_eq!(p.standing(&["cert:laptop".into()]).role_for(None), None);
    }

    #[test]
    fn grants_scope_roles_to_pipelines() {
        let p = AccessPolicy::new(
            &[grant(&["cert:ops-*"], "operator", &["line-*"]), grant(&["cert:ops-1"], "viewer", &[])],
            999,
        )
        .unwrap();
        let s = p.standing(&["cert:ops-1".into()]);
        assert_eq!(s.role_for(Some("line-2")), Some(Role::Operator));
        assert_eq!(s.role_for(Some("boiler")), Some(Role::Viewer));
        assert_eq!(s.role_for(None), Some(Role::Viewer));
        assert_eq!(p.standing(&["uid:1000".into()]).role_for(None), None, "grants given: no default viewers");
        assert!(AccessPolicy::new(&[grant(&["x"], "root", &[])], 1).is_err());
    }
}
