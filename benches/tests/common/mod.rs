//! What the cross-checks against DataFusion share: where the `eddyd` under test is, and rows of
//! either side as comparable JSON maps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use arrow::array::RecordBatch;
use serde_json::Value;

/// A JSON row with NULL members and an upsert sink's `_op` dropped, and timestamps as epoch ms
/// (so that Eddy's RFC 3339 and Arrow's spelling compare).
pub fn normalise(v: Value) -> BTreeMap<String, Value> {
    let Value::Object(m) = v else { return BTreeMap::new() };
    m.into_iter()
        .filter(|(k, v)| !v.is_null() && k != "_op")
        .map(|(k, v)| {
            let v = match v.as_str().filter(|s| s.len() >= 19 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T') {
                Some(s) => eddy_engine::time::parse_timestamp_ms(s).map(Value::from).unwrap_or(v),
                None => v,
            };
            (k, v)
        })
        .collect()
}

/// A batch query's result as normalised rows.
pub fn batch_rows(batches: &[RecordBatch]) -> Result<Vec<BTreeMap<String, Value>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    String::from_utf8(buf)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(normalise(serde_json::from_str(l)?)))
        .collect()
}

/// `target/<profile>/eddyd`, beside this test's own `deps/` folder.
pub fn eddyd() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    dir.join(format!("eddyd{}", std::env::consts::EXE_SUFFIX))
}
