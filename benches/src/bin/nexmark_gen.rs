//! Writes the Nexmark events of the engine's `nexmark` source to JSON-lines files, one per stream
//! (`person.jsonl`, `auction.jsonl`, `bid.jsonl`), so that Eddy (`eddyd replay --input`) and other
//! engines read the very same events; and q13's side input (`side_input.jsonl`, 10,000 keys).
//!
//!   nexmark_gen DIR EVENTS [SEED]

use anyhow::{Context, Result};
use eddy_engine::connector::NexmarkConfig;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, events, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: nexmark_gen DIR EVENTS [SEED]");
    };
    let events: u64 = events.parse().context("EVENTS")?;
    let mut cfg = NexmarkConfig { events: Some(events), ..NexmarkConfig::default() };
    if let Some(seed) = rest.first() {
        cfg.seed = seed.parse().context("SEED")?;
    }
    let dir = std::path::Path::new(dir);
    let counts = eddy_benches::write_nexmark_files(dir, &cfg).with_context(|| format!("writing {}", dir.display()))?;
    println!("{{\"person\": {}, \"auction\": {}, \"bid\": {}}}", counts[0], counts[1], counts[2]);
    Ok(())
}
