//! Where to connect: flags, then `EDDY_*` variables, then a profile in
//! `~/.config/eddy/eddyctl.toml`, then the local socket. Owns that precedence; never connects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use eddy_client::{Target, TlsFiles, DEFAULT_SOCKET};
use serde::Deserialize;

/// One named gateway in the profile file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `host:port` of the daemon's TCP listener.
    pub host: Option<String>,
    pub socket: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    /// Plaintext TCP (only a daemon allowing it on loopback answers).
    #[serde(default)]
    pub plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    default: Option<String>,
    #[serde(default)]
    profile: BTreeMap<String, Profile>,
}

/// `$XDG_CONFIG_HOME/eddy/eddyctl.toml`, else `~/.config/eddy/eddyctl.toml`.
pub fn profile_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("eddy").join("eddyctl.toml"))
}

/// Loads the named profile (or the file's default); none when no file and no name.
pub fn load(name: Option<&str>) -> Result<Profile> {
    let Some(path) = profile_path() else {
        return match name {
            Some(n) => bail!("profile {n}: no HOME to find eddyctl.toml in"),
            None => Ok(Profile::default()),
        };
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.is_none() => return Ok(Profile::default()),
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    };
    let file: ProfileFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    let Some(want) = name.map(str::to_string).or(file.default.clone()) else { return Ok(Profile::default()) };
    let mut p =
        file.profile.get(&want).cloned().ok_or_else(|| anyhow!("{}: no profile named {want}", path.display()))?;
    for f in [&mut p.ca, &mut p.cert, &mut p.key, &mut p.socket] {
        if let Some(x) = f.as_mut() {
            if x.is_relative() {
                *x = base.join(&*x);
            }
        }
    }
    Ok(p)
}

/// The target the flags and profile describe.
pub fn target(p: &Profile) -> Result<Target> {
    match &p.host {
        None => Ok(Target::Unix(p.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))),
        Some(h) if p.plaintext => Ok(Target::Plain { address: h.clone() }),
        Some(h) => {
            let need = |f: &Option<PathBuf>, flag: &str| {
                f.clone().ok_or_else(|| anyhow!("--host {h} uses mutual TLS: give {flag} (or set it in a profile)"))
            };
            Ok(Target::Tls {
                address: h.clone(),
                files: TlsFiles {
                    ca: need(&p.ca, "--ca")?,
                    cert: need(&p.cert, "--cert")?,
                    key: need(&p.key, "--key")?,
                    server_name: p.server_name.clone(),
                },
            })
        }
    }
}
