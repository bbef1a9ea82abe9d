//! Where the state key comes from: key files (`ID:HEX64` lines), the systemd credential, and
//! `eddyd keygen`. The engine only takes key material ([`Cipher::from_keys`]); the policy of
//! where keys live, who may read them and how they are spelled is the daemon's.
//!
//! Never logs, formats or echoes key bytes; errors name the file and line, not the content.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ring::rand::{SecureRandom, SystemRandom};

use eddy_engine::storage::{Cipher, KEY_LEN};

/// Reads a key file; refuses one that group or others may read.
pub fn from_key_file(path: &Path) -> Result<Cipher> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("key file {} has mode {mode:04o}; it must be readable by its owner only (chmod 600)", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("key file {}", path.display()))?;
    parse_keys(&text).with_context(|| format!("key file {}", path.display()))
}

/// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (systemd makes it private to the unit).
pub fn from_credential(name: &str) -> Result<Option<Cipher>> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else { return Ok(None) };
    let path = Path::new(&dir).join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("credential {}", path.display()))?;
    parse_keys(&text).map(Some).with_context(|| format!("credential {}", path.display()))
}

/// One `ID:HEX64` per line (a bare `HEX64` is key 1); `#` comments and blank lines are skipped.
/// The last key is the one new files use.
pub fn parse_keys(text: &str) -> Result<Cipher> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, hex) = match line.split_once(':') {
            Some((id, hex)) => {
                let id = id
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| anyhow!("line {}: key id '{}' is not a number", n + 1, id.trim()))?;
                (id, hex.trim())
            }
            None => (1, line),
        };
        let key = decode_hex_key(hex).map_err(|m| anyhow!("line {}: {m}", n + 1))?;
        keys.push((id, key));
    }
    Ok(Cipher::from_keys(&keys)?)
}

fn decode_hex_key(hex: &str) -> std::result::Result<[u8; KEY_LEN], String> {
    if hex.len() != KEY_LEN * 2 || !hex.is_ascii() {
        return Err(format!("a key is {} hex digits, found {} characters", KEY_LEN * 2, hex.chars().count()));
    }
    let mut out = [0u8; KEY_LEN];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        // ASCII checked above, so every chunk is a valid str; the digits themselves are not echoed.
        let s = std::str::from_utf8(chunk).map_err(|_| "not hex".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| format!("not hex at digit {}", i * 2 + 1))?;
    }
    Ok(out)
}

/// A new random key as a key-file line (`eddyd keygen`). Key ids start at 1: 0 means plaintext
/// in the file formats.
pub fn generate_key_line(id: u32) -> Result<String> {
    if id == 0 {
        bail!("key id 0 is reserved (it marks unencrypted files); key ids start at 1");
    }
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut k).map_err(|_| anyhow!("the system random generator failed"))?;
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{id}:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn key_id_zero_is_refused_everywhere() {
        assert!(generate_key_line(0).is_err());
        let e = parse_keys(&format!("0:{HEX}")).map(|_| ()).unwrap_err();
        assert!(format!("{e:#}").contains("key id 0"), "{e:#}");
        let c = parse_keys(&format!("# rotated\n1:{HEX}\n\n2:{HEX}\n")).unwrap();
        assert_eq!(c.current().0, 2);
        assert_eq!(parse_keys(HEX).unwrap().current().0, 1);
    }

    #[test]
    fn bad_key_lines_name_the_line_not_the_key() {
        let e = format!("{:#}", parse_keys(&format!("1:{}zz", &HEX[..62])).map(|_| ()).unwrap_err());
        assert!(e.contains("line 1") && !e.contains(&HEX[..62]), "{e}");
        let e = format!("{:#}", parse_keys("x:00").map(|_| ()).unwrap_err());
        assert!(e.contains("is not a number"), "{e}");
    }
}
