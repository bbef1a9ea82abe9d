//! What the property tests share: their input, readings of a few devices as JSON lines.

/// Epoch milliseconds that the tests' relative times count from (2026-03-01T08:00:00Z).
pub const T0_MS: i64 = 1_772_352_000_000;

/// Writes `dir/in.jsonl`: one `{"device_id":"dev-N","v":…,"ts":…}` line per (device, value,
/// time relative to [`T0_MS`]); `v` is written as given (a JSON number).
pub fn write_readings(dir: &std::path::Path, rows: impl Iterator<Item = (u8, String, i64)>) {
    let mut input = String::new();
    for (dev, v, ts) in rows {
        input.push_str(&format!(
            "{{\"device_id\":\"dev-{dev}\",\"v\":{v},\"ts\":\"{}\"}}\n",
            eddy_engine::time::rfc3339_ms(T0_MS + ts)
        ));
    }
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
}
