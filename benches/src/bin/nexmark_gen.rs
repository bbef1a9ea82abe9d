//! Writes the Nexmark events of the engine's `nexmark` source to JSON-lines files, one per stream
//! (`person.jsonl`, `auction.jsonl`, `bid.jsonl`), so that Eddy (`eddyd replay --input`) and other
//! engines read the very same events; and q13's side input (`side_input.jsonl`, 10,000 keys).
//!
//!   nexmark_gen DIR EVENTS [SEED]

use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use eddy_engine::connector::nexmark::{write_event, NexmarkConfig, Stream};

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
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let open = |s: Stream| -> Result<BufWriter<std::fs::File>> {
        let p = dir.join(format!("{}.jsonl", s.name()));
        Ok(BufWriter::with_capacity(1 << 20, std::fs::File::create(&p).with_context(|| format!("{}", p.display()))?))
    };
    let mut out = [open(Stream::Person)?, open(Stream::Auction)?, open(Stream::Bid)?];
    let mut counts = [0u64; 3];
    let mut line = Vec::with_capacity(1024);
    for n in 0..events {
        line.clear();
        let s = write_event(&cfg, cfg.start_ms, n, &mut line);
        line.push(b'\n');
        out[s as usize].write_all(&line)?;
        counts[s as usize] += 1;
    }
    for o in &mut out {
        o.flush()?;
    }
    eddy_benches::write_nexmark_side_input(&dir.join("side_input.jsonl"), 10_000)?;
    println!("{{\"person\": {}, \"auction\": {}, \"bid\": {}}}", counts[0], counts[1], counts[2]);
    Ok(())
}
