//! The fuzz targets of `fuzz/` (nightly, libFuzzer) run on stable in every test run: each over
//! valid seeds and thousands of their mutations — truncations, bit flips, byte overwrites,
//! insertions, splices — and random bytes. Deterministic (a fixed seed), so a failure repeats.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;
use std::sync::Arc;

use eddy_engine::storage::SimFs;
use eddy_engine::storage::Wal;
use eddy_engine::storage::{CheckpointStore, SourceMark};

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }
}

/// One mutation of a seed (or of two seeds spliced).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 => v.truncate(rng.below(v.len() + 1)),
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, b'"', b'{', b',', b'\n', 0x80][rng.below(7)];
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.below(256) as u8).collect();
                v.splice(i..i, junk);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let (i, j) = (rng.below(v.len() + 1), rng.below(other.len() + 1));
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            5 if v.len() > 1 => {
                let i = rng.below(v.len());
                let len = rng.below(v.len() - i);
                v.drain(i..i + len);
            }
            _ => v = (0..rng.below(300)).map(|_| rng.below(256) as u8).collect(),
        }
    }
    v
}

/// Runs `target` on every seed (some are hostile on purpose, but most decode something) and on
/// `runs` mutations, of which some must still decode something (they reach past the first
/// check) and some must not.
fn drive(target: fn(&[u8]) -> usize, seeds: &[Vec<u8>], runs: usize, seed: u64) {
    let good = seeds.iter().filter(|s| target(s) > 0).count();
    assert!(good * 2 > seeds.len(), "only {good} of {} seeds decode", seeds.len());
    let mut rng = Rng(seed);
    let decoded = (0..runs).filter(|_| target(&mutate(&mut rng, seeds)) > 0).count();
    assert!(decoded > 0 && decoded < runs, "{decoded} of {runs} mutations decoded something");
    println!("{decoded} of {runs} mutations decoded something");
}

fn golden_files(name_ends: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut out = Vec::new();
    for case in std::fs::read_dir(root).unwrap() {
        let case = case.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&case).unwrap() {
            let f = f.unwrap().path();
            if f.to_string_lossy().ends_with(name_ends) {
                out.push(std::fs::read(f).unwrap());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn wal_segments() {
    let mut seeds = Vec::new();
    for encrypted in [false, true] {
        let fs = SimFs::new();
        let mut wal = Wal::open(Arc::new(fs.clone()), targets::cipher(encrypted), targets::wal_config()).unwrap();
        for i in 0..6u8 {
            wal.append(&vec![i; 1 + i as usize * 7]).unwrap();
        }
        wal.commit().unwrap();
        let path = wal.segment_paths()[0].clone();
        assert_eq!(path, targets::first_segment_path());
        let mut seed = vec![encrypted as u8];
        seed.extend(fs.contents(&path).unwrap());
        seeds.push(seed);
    }
    drive(targets::wal_segment, &seeds, 6000, 1);
}

#[test]
fn checkpoint_files() {
    let mut seeds = Vec::new();
    for encrypted in [false, true] {
        let fs = SimFs::new();
        let dir = Path::new("/s/checkpoints");
        let (mut store, _) = CheckpointStore::open(Arc::new(fs.clone()), targets::cipher(encrypted), dir).unwrap();
        let marks = vec![SourceMark { name: "s".into(), position: vec![1, 2, 3], watermark: 42 }];
        store
            .write(7, b"fingerprint", marks, &[("node/0/x".into(), vec![9; 40]), ("source/s".into(), vec![5; 12])])
            .unwrap();
        let file = |prefix: &str| {
            fs.paths().into_iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).unwrap()
        };
        let (manifest, state) = (fs.contents(&file("manifest-")).unwrap(), fs.contents(&file("state-")).unwrap());
        // The target names its files for seq 1, as the first checkpoint's are.
        assert!(file("manifest-").ends_with("manifest-0000000001"));
        let mut seed = vec![encrypted as u8];
        seed.extend((manifest.len() as u16).to_le_bytes());
        seed.extend(manifest);
        seed.extend(state);
        seeds.push(seed);
    }
    drive(targets::checkpoint_manifest, &seeds, 4000, 2);
}

#[test]
fn json_payloads() {
    let mut seeds: Vec<Vec<u8>> = golden_files(".jsonl")
        .iter()
        .flat_map(|f| f.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .take(200)
        .collect();
    seeds.push(
        br#"[{"device_id":"a","ts":1,"temp":2.5,"n":3,"ok":true},{"device_id":"b","ts":"2026-03-01T08:00:00Z"}]"#
            .to_vec(),
    );
    seeds.push(br#"{"device_id":"\u00e9\ud83d\ude00","ts":1e3,"temp":-0.0,"n":9223372036854775807,"nested":{"a":[1,{"b":null}]}}"#.to_vec());
    drive(targets::json_payload, &seeds, 20000, 3);
}

#[test]
fn csv_payloads() {
    let seeds: Vec<Vec<u8>> = vec![
        b"dev-1,21.5,2026-03-01T08:00:00Z,3,true".to_vec(),
        b"\"dev,2\",\"\",1700000000000,,false\ndev-3,1e400,1,-9223372036854775808,TRUE\n".to_vec(),
        b"a,b\r\n\"unterminated,1,2".to_vec(),
    ];
    drive(targets::csv_payload, &seeds, 20000, 4);
}

/// One of `seeds` (as tokens) with `edits` token edits: a token dropped, doubled, or replaced by
/// one from another seed. Such mutations reach past the parser into the planner.
fn token_mutation(rng: &mut Rng, seeds: &[Vec<String>], edits: usize) -> String {
    let mut t = seeds[rng.below(seeds.len())].clone();
    for _ in 0..edits {
        let i = rng.below(t.len());
        match rng.below(3) {
            0 => {
                t.remove(i);
            }
            1 => t.insert(i, t[i].clone()),
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                t[i] = other[rng.below(other.len())].clone();
            }
        }
    }
    t.join(" ")
}

#[test]
fn pipeline_sql() {
    let seeds = golden_files("pipeline.sql");
    assert!(seeds.len() > 30);
    drive(targets::sql_pipeline, &seeds, 1500, 5);
    // Token-level mutations reach past the parser into the planner: a token dropped, doubled,
    // or replaced by one from another pipeline.
    let tokens: Vec<Vec<String>> =
        seeds.iter().map(|s| String::from_utf8_lossy(s).split_whitespace().map(str::to_string).collect()).collect();
    let mut rng = Rng(6);
    let mut planned = 0;
    for _ in 0..6000 {
        let edits = 1 + rng.below(2);
        planned += targets::sql_pipeline(token_mutation(&mut rng, &tokens, edits).as_bytes());
    }
    assert!(planned >= 40, "only {planned} of 6000 token mutations planned");
}

#[test]
fn view_queries() {
    let seeds: Vec<Vec<u8>> = [
        "SELECT * FROM per_device",
        "SELECT device, n * 2 AS twice FROM per_device WHERE hottest > 0 ORDER BY twice DESC LIMIT 2",
        "SELECT COUNT(*) AS c, SUM(n) AS s, MAX(hottest) AS h FROM per_device",
        "SELECT device, COUNT(*) AS c FROM per_device GROUP BY device ORDER BY 2, 1 LIMIT 1 OFFSET 1",
        "SELECT MAX(n) AS m FROM (SELECT device, n FROM per_device WHERE device <> 'a');",
        "SELECT device, COALESCE(hottest, 0) AS h, seen FROM per_device ORDER BY h NULLS FIRST",
        "SELECT UPPER(device) AS d, CAST(n AS DOUBLE) / 3 AS third FROM per_device WHERE seen > TIMESTAMP '2023-01-01 00:00:00'",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    assert_eq!(seeds.iter().map(|s| targets::view_query(s)).sum::<usize>(), seeds.len(), "every seed is answered");
    drive(targets::view_query, &seeds, 3000, 7);
    let tokens: Vec<Vec<String>> =
        seeds.iter().map(|s| String::from_utf8_lossy(s).split_whitespace().map(str::to_string).collect()).collect();
    let mut rng = Rng(8);
    let mut answered = 0;
    for _ in 0..3000 {
        answered += targets::view_query(token_mutation(&mut rng, &tokens, 1).as_bytes());
    }
    assert!(answered >= 100, "only {answered} of 3000 token mutations were answered");
}
