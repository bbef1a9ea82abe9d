//! A secret value (a password, a token): readable only through [`Secret::expose`], printed as
//! `***` by `Debug`, so a derived `Debug` of a settings struct or a config dump never shows it.

use serde::Deserialize;

#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value itself, for the one place that hands it to a protocol.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret connector option (`password`): its text is never part of an error.
impl eddy_engine::connector::OptionValue for Secret {
    fn parse_option(text: &str) -> Result<Self, String> {
        Ok(Secret::new(text))
    }
}

/// Serialized (for `GetConfig`) as `<set>`: a config dump never holds the value.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// What stands for a secret's value wherever config is shown.
pub const MASK: &str = "<set>";

/// Whether a librdkafka-style option name holds a credential.
pub fn is_secret_key(key: &str) -> bool {
    ["password", "secret", "token", "jaas", "oauthbearer.config", "key.pem", "certificate.pem"]
        .iter()
        .any(|w| key.contains(w))
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `url` with any `user:password@` part replaced by `***@`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_or_urls() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {:?}", Some(&s)), "*** Some(***)");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(redact_url("mqtt://bob:hunter2@broker:1883"), "mqtt://***@broker:1883");
        assert_eq!(redact_url("mqtts://broker:8883/x@y"), "mqtts://broker:8883/x@y");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
