//! The WAL and checkpoint store against a model, on a simulated filesystem that keeps only what was
//! synced: at every fsync point, crash images (durable only; with some pending writes; with a torn
//! sector) must recover to a state at or after the last acknowledged commit, with exactly the bytes
//! written. Injected EIO poisons the WAL. Truncation at every offset and single bit flips give a cut
//! torn tail or a named error, never wrong data. Moved records fail authentication.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use eddy_engine::storage::CheckpointStore;
use eddy_engine::storage::Cipher;
use eddy_engine::storage::Owner;
use eddy_engine::storage::Storage;
use eddy_engine::storage::StorageError;
use eddy_engine::storage::{Crash, SimFs};
use eddy_engine::storage::{Wal, WalConfig, FRAME_HEADER};

fn cipher(encrypted: bool) -> Arc<Cipher> {
    Arc::new(if encrypted { Cipher::from_keys(&[(7, [0x42; 32])]).unwrap() } else { Cipher::plaintext() })
}

fn cfg() -> WalConfig {
    let mut c = WalConfig::new("/s/wal");
    c.segment_bytes = 2048;
    c.max_record_bytes = 1024;
    c
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn record(i: u64, rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn replay_all(fs: &SimFs, c: &Arc<Cipher>) -> Result<Vec<Vec<u8>>, StorageError> {
    let wal = Wal::open(Arc::new(fs.clone()), c.clone(), cfg())?;
    let mut out = vec![];
    wal.replay(0, &mut |lsn, p| {
        assert_eq!(lsn as usize, out.len(), "LSNs are dense from 0");
        out.push(p.to_vec());
        Ok(())
    })?;
    Ok(out)
}

type Images = Arc<Mutex<Vec<(SimFs, u64)>>>;

/// At every sync point of `fs`, keeps crash images (durable only; each count of pending writes,
/// whole and torn) with what the test had acknowledged then (the returned counter).
fn take_crash_images(fs: &SimFs) -> (Arc<AtomicU64>, Images) {
    let acked = Arc::new(AtomicU64::new(0));
    let images: Images = Arc::default();
    let (a2, i2) = (acked.clone(), images.clone());
    fs.on_sync(move |fs| {
        let a = a2.load(Ordering::SeqCst);
        let mut imgs = i2.lock().unwrap();
        imgs.push((fs.crash_image(Crash::DurableOnly), a));
        for n in 0..=fs.max_pending() {
            imgs.push((fs.crash_image(Crash::Pending(n)), a));
            imgs.push((fs.crash_image(Crash::Torn(n)), a));
            for seed in 1..4 {
                imgs.push((fs.crash_image(Crash::Scattered(n, seed * 0x9e37_79b9 + n as u64)), a));
            }
        }
    });
    (acked, images)
}

/// Every crash image taken at every sync point recovers a prefix of what was appended that holds
/// at least everything acknowledged when the image was taken.
fn wal_crash_model(encrypted: bool, seed: u64) {
    let fs = SimFs::new();
    let c = cipher(encrypted);
    let (acked, images) = take_crash_images(&fs);
    let mut rng = Rng(seed);
    let mut written: Vec<Vec<u8>> = vec![];
    // Three lives of the log: each reopens what the last left, as after a clean stop.
    for _life in 0..3 {
        let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), cfg()).unwrap();
        assert_eq!(wal.next_lsn() as usize, written.len());
        for _ in 0..40 {
            let r = record(written.len() as u64, &mut rng);
            wal.append(&r).unwrap();
            written.push(r);
            if rng.below(4) == 0 {
                let d = wal.commit().unwrap();
                acked.store(d, Ordering::SeqCst);
            }
        }
        let d = wal.commit().unwrap();
        acked.store(d, Ordering::SeqCst);
    }
    let images = std::mem::take(&mut *images.lock().unwrap());
    assert!(images.len() > 100, "crash images were taken at the sync points");
    for (k, (img, acked)) in images.iter().enumerate() {
        let got = replay_all(img, &c).unwrap_or_else(|e| panic!("image {k}: recovery failed: {e}"));
        assert!(got.len() as u64 >= *acked, "image {k}: {} records recovered, {acked} were acknowledged", got.len());
        assert!(got.len() <= written.len());
        assert!(got[..] == written[..got.len()], "image {k}: recovered records differ from those written");
        // A recovered log takes new appends and recovers them too.
        let mut wal = Wal::open(Arc::new(img.clone()), c.clone(), cfg()).unwrap();
        wal.append(b"after").unwrap();
        wal.commit().unwrap();
        let again = replay_all(img, &c).unwrap();
        assert_eq!(again.len(), got.len() + 1);
        assert_eq!(again.last().unwrap(), b"after");
    }
}

#[test]
fn wal_crash_images_recover_acknowledged_records_plain() {
    wal_crash_model(false, 1);
}

#[test]
fn wal_crash_images_recover_acknowledged_records_encrypted() {
    wal_crash_model(true, 2);
}

/// Many small random lives of the log, each against crash images at a sample of its sync points
/// (durable only, pending, torn and scattered sectors): recovery always yields a prefix holding
/// every acknowledged record. Seeds run on all cores; 10,000 of them in CI.
#[test]
fn wal_crash_model_over_many_seeds() {
    const SEEDS: u64 = 10_000;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as u64;
    let workers: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || (t..SEEDS).step_by(threads as usize).map(small_wal_life).sum::<usize>()))
        .collect();
    let images: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(images > SEEDS as usize * 2, "only {images} crash images over {SEEDS} seeds");
    eprintln!("{SEEDS} seeds, {images} crash images recovered");
}

/// One small random life of the log; returns how many crash images it checked.
fn small_wal_life(seed: u64) -> usize {
    let fs = SimFs::new();
    let c = cipher(seed.is_multiple_of(2));
    let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) + 1);
    let images: Images = Arc::default();
    let acked = Arc::new(AtomicU64::new(0));
    let pick = rng.below(6) + 1;
    {
        let (a2, i2) = (acked.clone(), images.clone());
        let mut n = 0u64;
        fs.on_sync(move |fs| {
            n += 1;
            if !n.is_multiple_of(pick) {
                return;
            }
            let a = a2.load(Ordering::SeqCst);
            let p = fs.max_pending();
            let crash = match n % 4 {
                0 => Crash::DurableOnly,
                1 => Crash::Pending(n as usize % (p + 1)),
                2 => Crash::Torn(n as usize % (p + 1)),
                _ => Crash::Scattered(n as usize % (p + 1), n * 7919 + p as u64),
            };
            i2.lock().unwrap().push((fs.crash_image(crash), a));
        });
    }
    let mut written: Vec<Vec<u8>> = vec![];
    for _life in 0..2 {
        let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), cfg()).unwrap();
        for _ in 0..rng.below(14) {
            let r = record(written.len() as u64, &mut rng);
            wal.append(&r).unwrap();
            written.push(r);
            if rng.below(3) == 0 {
                acked.store(wal.commit().unwrap(), Ordering::SeqCst);
            }
        }
        acked.store(wal.commit().unwrap(), Ordering::SeqCst);
    }
    for (k, (img, acked)) in images.lock().unwrap().iter().enumerate() {
        let got = replay_all(img, &c).unwrap_or_else(|e| panic!("seed {seed} image {k}: recovery failed: {e}"));
        assert!(got.len() as u64 >= *acked, "seed {seed} image {k}: {} recovered, {acked} acknowledged", got.len());
        assert!(got[..] == written[..got.len()], "seed {seed} image {k}: wrong records");
    }
    let n = images.lock().unwrap().len();
    n
}

/// After a SIGKILL between a write and its fdatasync, the records are in the page cache: a restart
/// reads them back, and must make them durable before counting them (input acknowledged as a
/// duplicate of such a record would otherwise be lost by a later power cut).
#[test]
fn records_found_after_a_kill_are_made_durable_before_they_count() {
    let c = cipher(true);
    let fs = SimFs::new();
    let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), cfg()).unwrap();
    for i in 0..5u64 {
        wal.append(&i.to_le_bytes()).unwrap();
    }
    wal.commit().unwrap();
    // The next commit's write lands, its fdatasync never runs: the process is killed.
    fs.fail_sync_after(0);
    for i in 5..9u64 {
        wal.append(&i.to_le_bytes()).unwrap();
    }
    assert!(wal.commit().is_err());
    let killed = fs.kill_image();
    let reopened = Wal::open(Arc::new(killed.clone()), c.clone(), cfg()).unwrap();
    assert_eq!(reopened.durable_lsn(), 9, "the records written before the kill are read back");
    // A power cut now must keep all that the reopened log reports durable.
    let got = replay_all(&killed.crash_image(Crash::DurableOnly), &c).unwrap();
    assert_eq!(got.len(), 9, "records reported durable after the restart were lost by a power cut");
}

/// A zeroed flash page in the middle of the last segment, with acknowledged commits after it:
/// the damage is reported (file, offset, LSN), never cut as a torn tail (which would silently
/// drop every acknowledged record after it).
#[test]
fn a_zeroed_page_before_later_commits_is_damage_not_a_torn_tail() {
    let c = cipher(true);
    let fs = SimFs::new();
    let mut conf = cfg();
    conf.segment_bytes = 1 << 20;
    let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf.clone()).unwrap();
    for i in 0..200u64 {
        wal.append(&[i as u8; 40]).unwrap();
        if i % 5 == 4 {
            wal.commit().unwrap();
        }
    }
    wal.commit().unwrap();
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    fs.zero(&path, 4096, 4096);
    let e = match Wal::open(Arc::new(fs.clone()), c.clone(), conf) {
        Ok(w) => panic!("opened, {} records left of 200: acknowledged records were cut", w.next_lsn()),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&path.display().to_string()) && e.contains("acknowledged") && e.contains("LSN"), "{e}");
}

/// A power cut that persisted a later sector of the last commit but not an earlier one: those
/// records were never acknowledged, so recovery cuts them and starts (it used to refuse).
#[test]
fn out_of_order_sectors_of_the_last_commit_are_a_torn_tail() {
    let c = cipher(false);
    for seed in 0..64u64 {
        let fs = SimFs::new();
        let mut conf = cfg();
        conf.segment_bytes = 1 << 20;
        let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf.clone()).unwrap();
        for i in 0..4u64 {
            wal.append(&[i as u8; 100]).unwrap();
        }
        wal.commit().unwrap();
        let images: Arc<std::sync::Mutex<Vec<SimFs>>> = Arc::default();
        let i2 = images.clone();
        fs.on_sync(move |fs| i2.lock().unwrap().push(fs.crash_image(Crash::Scattered(0, seed + 1))));
        for i in 4..40u64 {
            wal.append(&[i as u8; 100]).unwrap();
        }
        wal.commit().unwrap();
        for img in images.lock().unwrap().iter() {
            let got = replay_all(img, &c).unwrap_or_else(|e| panic!("seed {seed}: refused to start: {e}"));
            assert!(got.len() >= 4 && got.iter().enumerate().all(|(i, r)| r == &vec![i as u8; 100]), "seed {seed}");
        }
    }
}

/// A lowered record limit does not turn records already written into "torn tails".
#[test]
fn a_lowered_record_limit_keeps_records_already_written() {
    let c = cipher(true);
    let fs = SimFs::new();
    let mut conf = cfg();
    conf.max_record_bytes = 64 << 10;
    conf.segment_bytes = 1 << 20;
    let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf.clone()).unwrap();
    for i in 0..6u64 {
        wal.append(&vec![i as u8; 20_000]).unwrap();
        wal.commit().unwrap();
    }
    drop(wal);
    conf.max_record_bytes = 1024;
    let wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf).unwrap();
    assert_eq!(wal.next_lsn(), 6);
    let mut n = 0;
    wal.replay(0, &mut |_, p| {
        assert_eq!(p.len(), 20_000);
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 6);
}

/// A directory made and never synced into its parent is gone after a crash, with its files.
#[test]
fn simfs_loses_a_directory_whose_entry_was_never_synced() {
    let fs = SimFs::new();
    let images: Arc<std::sync::Mutex<Vec<SimFs>>> = Arc::default();
    let i2 = images.clone();
    fs.on_sync(move |fs| i2.lock().unwrap().push(fs.crash_image(Crash::DurableOnly)));
    fs.create_dir_all(Path::new("/a/b")).unwrap();
    let mut f = fs.create(Path::new("/a/b/f")).unwrap();
    f.write_at(0, b"x").unwrap();
    f.sync().unwrap();
    fs.sync_dir(Path::new("/a/b")).unwrap();
    let imgs = images.lock().unwrap();
    // At the first sync point (before "/a" is in "/"), nothing of /a survives a crash.
    assert!(imgs[0].paths().is_empty());
    assert_eq!(fs.crash_image(Crash::DurableOnly).contents(Path::new("/a/b/f")).as_deref(), Some(&b"x"[..]));
}

#[test]
fn injected_eio_poisons_the_wal() {
    let c = cipher(true);
    for (on_sync, n) in [(false, 0), (false, 3), (true, 0), (true, 2)] {
        let fs = SimFs::new();
        let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), cfg()).unwrap();
        let mut acked = 0;
        if on_sync {
            fs.fail_sync_after(n);
        } else {
            fs.fail_write_after(n);
        }
        let mut failed = false;
        for i in 0..50u64 {
            if wal.append(&i.to_le_bytes()).is_err() {
                failed = true;
                break;
            }
            match wal.commit() {
                Ok(d) => acked = d,
                Err(e) => {
                    assert!(!matches!(e, StorageError::Poisoned(_)), "the first failure names its cause: {e}");
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "the injected fault surfaced");
        // Poisoned: nothing more is taken or acknowledged.
        assert!(matches!(wal.append(b"x"), Err(StorageError::Poisoned(_))));
        assert!(matches!(wal.commit(), Err(StorageError::Poisoned(_))));
        assert_eq!(wal.durable_lsn(), acked);
        // A restart recovers at least what was acknowledged, and only what was written.
        let got = replay_all(&fs.crash_image(Crash::DurableOnly), &c).unwrap();
        assert!(got.len() as u64 >= acked);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r, &(i as u64).to_le_bytes());
        }
    }
}

/// One segment of `n` records, as bytes.
fn one_segment(c: &Arc<Cipher>, n: u64) -> (PathBuf, Vec<u8>, Vec<Vec<u8>>) {
    let fs = SimFs::new();
    let mut conf = cfg();
    conf.segment_bytes = 1 << 20;
    let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf).unwrap();
    let mut rng = Rng(9);
    let recs: Vec<Vec<u8>> = (0..n).map(|i| record(i, &mut rng)).collect();
    // Commits of three records: damage before the last commit is provably acknowledged.
    for (i, r) in recs.iter().enumerate() {
        wal.append(r).unwrap();
        if i % 3 == 2 {
            wal.commit().unwrap();
        }
    }
    wal.commit().unwrap();
    let path = wal.segment_paths()[0].clone();
    let bytes = fs.contents(&path).unwrap();
    (path, bytes, recs)
}

#[test]
fn truncation_at_every_offset_cuts_a_torn_tail() {
    for enc in [false, true] {
        let c = cipher(enc);
        let (path, bytes, recs) = one_segment(&c, 12);
        // Frame ends, to know which records a cut keeps whole.
        let full = replay_all(
            &{
                let f = SimFs::new();
                f.put(&path, bytes.clone());
                f
            },
            &c,
        )
        .unwrap();
        assert_eq!(full, recs);
        for len in 0..bytes.len() {
            let fs = SimFs::new();
            fs.put(&path, bytes[..len].to_vec());
            let got = replay_all(&fs, &c).unwrap_or_else(|e| panic!("cut at {len}: {e}"));
            assert!(got[..] == recs[..got.len()], "cut at {len}: wrong data");
            // Every record whose frame lies wholly before the cut survives.
            let whole = recs.iter().scan(64usize, |end, r| {
                *end += FRAME_HEADER + r.len() + if enc { 16 } else { 0 };
                Some(*end)
            });
            let expect = whole.filter(|&e| e <= len).count();
            assert_eq!(got.len(), expect, "cut at {len}");
        }
    }
}

#[test]
fn single_bit_flips_give_a_named_error_or_drop_only_the_last_record() {
    for enc in [false, true] {
        let c = cipher(enc);
        let (path, bytes, recs) = one_segment(&c, 10);
        let mut errors = 0;
        for byte in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[byte] ^= 1 << bit;
                let fs = SimFs::new();
                fs.put(&path, b);
                match replay_all(&fs, &c) {
                    Ok(got) => {
                        assert!(got[..] == recs[..got.len()], "flip at {byte}.{bit}: wrong data recovered");
                        assert!(
                            got.len() + 1 >= recs.len(),
                            "flip at {byte}.{bit}: only a torn last record may go ({} of {})",
                            got.len(),
                            recs.len()
                        );
                    }
                    Err(e) => {
                        let m = e.to_string();
                        assert!(
                            m.contains(&path.display().to_string()) && (m.contains("offset") || m.contains("header")),
                            "flip at {byte}.{bit}: {m}"
                        );
                        errors += 1;
                    }
                }
            }
        }
        assert!(errors > bytes.len(), "most flips are errors");
    }
}

#[test]
fn a_record_moved_to_another_segment_fails_authentication() {
    let c = cipher(true);
    let (path, a, _) = one_segment(&c, 3);
    let (_, b, _) = one_segment(&c, 3);
    // Put b's first frame in a's place, with a's LSN and a fresh CRC: only the AEAD can tell.
    let len = u32::from_le_bytes(a[68..72].try_into().unwrap()) as usize;
    let blen = u32::from_le_bytes(b[68..72].try_into().unwrap()) as usize;
    assert_eq!(len, blen, "both first records have the same length");
    let mut m = a.clone();
    let h = FRAME_HEADER;
    m[64 + h..64 + h + len].copy_from_slice(&b[64 + h..64 + h + len]);
    let crc = crc32c::crc32c(&m[64 + 4..64 + h + len]);
    m[64..68].copy_from_slice(&crc.to_le_bytes());
    let fs = SimFs::new();
    fs.put(&path, m);
    let e = replay_all(&fs, &c).unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");
}

#[test]
fn checkpoint_crash_images_recover_a_committed_checkpoint() {
    let fs = SimFs::new();
    let c = cipher(true);
    let dir = Path::new("/s/ckpt");
    let (acked, images) = take_crash_images(&fs);
    let blobs_of = |seq: u64| -> Vec<(String, Vec<u8>)> {
        // "stable" never changes (reused), "moving" changes every time, "grow" grows.
        vec![
            ("stable".into(), vec![1, 2, 3]),
            ("moving".into(), seq.to_le_bytes().to_vec()),
            ("grow".into(), vec![seq as u8; 100 * seq as usize]),
        ]
    };
    let (mut store, rec) = CheckpointStore::open(Arc::new(fs.clone()), c.clone(), dir).unwrap();
    assert!(rec.is_none());
    for i in 1..=8u64 {
        let info = store.write(i * 10, b"fp", vec![], &blobs_of(i)).unwrap();
        assert_eq!(info.seq, i);
        if i > 1 {
            assert_eq!(info.blobs_reused, 1, "the unchanged blob is not written again");
        }
        acked.store(i, Ordering::SeqCst);
    }
    let images = std::mem::take(&mut *images.lock().unwrap());
    assert!(images.len() > 20);
    for (k, (img, acked)) in images.iter().enumerate() {
        let (_, rec) =
            CheckpointStore::open(Arc::new(img.clone()), c.clone(), dir).unwrap_or_else(|e| panic!("image {k}: {e}"));
        match rec {
            None => assert_eq!(*acked, 0, "image {k}: acknowledged checkpoint {acked} lost"),
            Some(r) => {
                let seq = r.manifest.seq;
                assert!(seq >= *acked, "image {k}: recovered checkpoint {seq}, but {acked} was acknowledged");
                assert_eq!(r.manifest.wal_lsn, seq * 10);
                for (name, data) in blobs_of(seq) {
                    assert_eq!(r.blobs[&name], data, "image {k}: blob {name} of checkpoint {seq}");
                }
            }
        }
    }
    // Only the retained checkpoints' files remain.
    let names = fs.list(dir).unwrap();
    assert_eq!(names.iter().filter(|n| n.starts_with("manifest-")).count(), 2, "{names:?}");
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let fs = SimFs::new();
    let c = cipher(true);
    let dir = Path::new("/s/ckpt");
    let (mut store, _) = CheckpointStore::open(Arc::new(fs.clone()), c.clone(), dir).unwrap();
    store.write(5, b"fp", vec![], &[("a".into(), vec![1; 50])]).unwrap();
    store.write(9, b"fp", vec![], &[("a".into(), vec![2; 50])]).unwrap();
    let newest = dir.join("manifest-0000000002");
    let mut m = fs.contents(&newest).unwrap();
    let last = m.len() - 1;
    m[last] ^= 1;
    fs.put(&newest, m);
    let (store, rec) = CheckpointStore::open(Arc::new(fs.clone()), c.clone(), dir).unwrap();
    let rec = rec.unwrap();
    assert_eq!(rec.manifest.seq, 1);
    assert_eq!(rec.blobs["a"], vec![1; 50]);
    assert_eq!(store.wal_keep_from(), 5);
}

#[test]
fn a_blob_moved_within_its_state_file_fails_authentication() {
    let fs = SimFs::new();
    let c = cipher(true);
    let dir = Path::new("/s/ckpt");
    let (mut store, _) = CheckpointStore::open(Arc::new(fs.clone()), c.clone(), dir).unwrap();
    store.write(1, b"fp", vec![], &[("a".into(), vec![1; 40]), ("b".into(), vec![2; 40])]).unwrap();
    let path = dir.join("state-0000000001.dat");
    let f = fs.contents(&path).unwrap();
    // Two blobs of equal size: swap their sealed bytes and fix each CRC.
    let (a, b) = (64usize, 64 + 16 + 40 + 16);
    let len = 40 + 16;
    let mut m = f.clone();
    m[a + 16..a + 16 + len].copy_from_slice(&f[b + 16..b + 16 + len]);
    m[b + 16..b + 16 + len].copy_from_slice(&f[a + 16..a + 16 + len]);
    for off in [a, b] {
        let crc = crc32c::crc32c(&m[off + 4..off + 16 + len]);
        m[off..off + 4].copy_from_slice(&crc.to_le_bytes());
    }
    fs.put(&path, m);
    let e = CheckpointStore::open(Arc::new(fs.clone()), c.clone(), dir).err().expect("must fail").to_string();
    assert!(e.contains("authentication failed"), "{e}");
}

/// A file of another owner is refused by its header, and — encrypted — also when the header is
/// rewritten to name this owner (with a fresh CRC): the tag binds the owner the reader expects.
#[test]
fn files_of_another_owner_are_refused_even_with_a_forged_header() {
    let c = cipher(true);
    let (a, b) = (Owner::of("line1"), Owner::of("line2"));
    // WAL
    let fs = SimFs::new();
    let mut conf = cfg();
    conf.owner = a;
    let mut wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf.clone()).unwrap();
    wal.append(b"reading").unwrap();
    wal.commit().unwrap();
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    conf.owner = b;
    let e = Wal::open(Arc::new(fs.clone()), c.clone(), conf.clone()).err().unwrap().to_string();
    assert!(e.contains("belongs to another"), "{e}");
    let mut bytes = fs.contents(&path).unwrap();
    bytes[40..48].copy_from_slice(&b.0);
    let crc = crc32c::crc32c(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    fs.put(&path, bytes);
    let wal = Wal::open(Arc::new(fs.clone()), c.clone(), conf).unwrap();
    let e = wal.replay(0, &mut |_, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");
    // Checkpoints
    let fs = SimFs::new();
    let dir = Path::new("/s/checkpoints");
    let (mut store, _) = CheckpointStore::open_owned(Arc::new(fs.clone()), c.clone(), dir, a).unwrap();
    store.write(0, b"fp", vec![], &[("node/0/x".to_string(), vec![1, 2, 3])]).unwrap();
    drop(store);
    let e = CheckpointStore::open_owned(Arc::new(fs.clone()), c.clone(), dir, b).err().unwrap().to_string();
    assert!(e.contains("belongs to another pipeline"), "{e}");
    let (_, rec) = CheckpointStore::open_owned(Arc::new(fs.clone()), c.clone(), dir, a).unwrap();
    assert!(rec.is_some());
}

/// After a key rotation, unchanged blobs are written again under the new key at the next
/// checkpoint (they used to be reused by digest forever, so the old key could never go), and
/// a restart leaves no manifest behind (one leaked per restart before).
#[test]
fn a_rotated_key_is_retired_by_the_next_checkpoint_and_restarts_leak_no_manifests() {
    let fs = SimFs::new();
    let dir = Path::new("/s/checkpoints");
    let k1 = Arc::new(Cipher::from_keys(&[(1, [1; 32])]).unwrap());
    let k12 = Arc::new(Cipher::from_keys(&[(1, [1; 32]), (2, [2; 32])]).unwrap());
    let k2 = Arc::new(Cipher::from_keys(&[(2, [2; 32])]).unwrap());
    let blobs = vec![("node/0/a".to_string(), vec![7u8; 100]), ("node/1/b".to_string(), vec![8u8; 100])];
    let (mut store, _) = CheckpointStore::open(Arc::new(fs.clone()), k1.clone(), dir).unwrap();
    store.write(10, b"fp", vec![], &blobs).unwrap();
    store.write(20, b"fp", vec![], &blobs).unwrap();
    drop(store);
    for _ in 0..3 {
        let (store, rec) = CheckpointStore::open(Arc::new(fs.clone()), k1.clone(), dir).unwrap();
        assert!(rec.is_some());
        drop(store);
    }
    let manifests = fs.paths().iter().filter(|p| p.to_string_lossy().contains("manifest-")).count();
    assert!(manifests <= 2, "{manifests} manifests left after restarts");
    // Rotate: key 2 is current; the next checkpoint rewrites both unchanged blobs under it.
    let (mut store, _) = CheckpointStore::open(Arc::new(fs.clone()), k12.clone(), dir).unwrap();
    let info = store.write(30, b"fp", vec![], &blobs).unwrap();
    assert_eq!((info.blobs_written, info.blobs_reused), (2, 0));
    assert_eq!(store.key_ids_in_use(), vec![2]);
    let info = store.write(40, b"fp", vec![], &blobs).unwrap();
    assert_eq!((info.blobs_written, info.blobs_reused), (0, 2), "under the current key, unchanged blobs are reused");
    drop(store);
    // Key 1 can go: the state opens with key 2 alone.
    let (_, rec) = CheckpointStore::open(Arc::new(fs.clone()), k2, dir).unwrap();
    assert_eq!(rec.unwrap().manifest.wal_lsn, 40);
}

/// A crafted manifest whose blob offset is near u64::MAX (valid CRC, plaintext): the bounds
/// check is done in checked 64-bit arithmetic, so it is a named error — never an overflow that
/// passes the check and then slices out of bounds (or wraps on a 32-bit target).
#[test]
fn a_crafted_manifest_with_an_overflowing_blob_offset_is_an_error() {
    use eddy_engine::storage::FileHeader;
    use eddy_engine::storage::{BlobRef, Manifest, MANIFEST_MAGIC};
    let fs = SimFs::new();
    let dir = Path::new("/s/checkpoints");
    let c = cipher(false);
    // A real state file for the reference to point into.
    let (mut store, _) = CheckpointStore::open(Arc::new(fs.clone()), c.clone(), dir).unwrap();
    store.write(0, b"fp", vec![], &[("node/0/x".to_string(), vec![1u8; 64])]).unwrap();
    drop(store);
    for offset in [u64::MAX - 8, u64::MAX - 16 - 100, (1 << 63) + 64] {
        let blob = BlobRef { name: "node/0/x".into(), file_seq: 1, offset, len: 100, index: 0, digest: vec![0; 32] };
        let m = Manifest {
            seq: 2,
            created_ms: 0,
            wal_lsn: 0,
            fingerprint: b"fp".to_vec(),
            sources: vec![],
            blobs: vec![blob],
        };
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&m).unwrap();
        let mut file = Vec::new();
        let header = FileHeader {
            version: 2,
            key_id: 0,
            seq: 2,
            nonce_prefix: [0; 8],
            key_check: [0; 8],
            owner: Owner::default(),
        };
        header.encode(MANIFEST_MAGIC, &mut file);
        file.extend_from_slice(&[0u8; 8]);
        file.extend_from_slice(&body);
        let len = body.len() as u32;
        file[68..72].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&file[68..]);
        file[64..68].copy_from_slice(&crc.to_le_bytes());
        fs.put(&dir.join("manifest-0000000002"), file);
        let got = std::panic::catch_unwind(|| {
            CheckpointStore::inspect(Arc::new(fs.clone()), c.clone(), dir, Owner::default()).unwrap()
        });
        let reports = got.unwrap_or_else(|_| panic!("offset {offset}: panicked"));
        let newest = reports.iter().find(|r| r.seq == 2).unwrap();
        let e = newest.result.clone().unwrap_err();
        assert!(e.contains("beyond the file"), "offset {offset}: {e}");
    }
}

/// A checkpoint copied elsewhere (a backup: manifest and the state files it names, no WAL) is
/// rebased into an empty directory: the same state, the same sequence number, continuing from
/// LSN 0, so a WAL that starts empty meets it. A damaged copy or a non-empty target is refused.
#[test]
fn a_copied_checkpoint_is_rebased_into_an_empty_directory() {
    use eddy_engine::storage::copy_rebased;
    let fs = SimFs::new();
    let c = cipher(true);
    let owner = Owner::of("line1");
    let (src, copy, to) = (Path::new("/a/ckpt"), Path::new("/b/download"), Path::new("/b/state/ckpt"));
    let (mut store, _) = CheckpointStore::open_owned(Arc::new(fs.clone()), c.clone(), src, owner).unwrap();
    store.write(40, b"fp", vec![], &[("a".into(), vec![1; 50]), ("b".into(), vec![2; 70])]).unwrap();
    store.write(90, b"fp", vec![], &[("a".into(), vec![3; 50]), ("b".into(), vec![2; 70])]).unwrap();
    let files = store.latest_files().unwrap();
    assert_eq!(files.seq, 2);
    assert_eq!(files.state_files.len(), 2, "blob b is still in the first state file: {files:?}");
    fs.create_dir_all(copy).unwrap();
    for p in files.state_files.iter().chain([&files.manifest]) {
        fs.put(&copy.join(p.file_name().unwrap()), fs.contents(p).unwrap());
    }
    let info = copy_rebased(Arc::new(fs.clone()), c.clone(), copy, to, owner).unwrap();
    assert_eq!((info.seq, info.blobs), (2, 2));
    let (store, rec) = CheckpointStore::open_owned(Arc::new(fs.clone()), c.clone(), to, owner).unwrap();
    let rec = rec.unwrap();
    assert_eq!((rec.manifest.seq, rec.manifest.wal_lsn), (2, 0));
    assert_eq!((rec.blobs["a"].clone(), rec.blobs["b"].clone()), (vec![3; 50], vec![2; 70]));
    assert_eq!(store.latest_files().unwrap().state_files.len(), 1);
    // Not over existing state.
    let e = copy_rebased(Arc::new(fs.clone()), c.clone(), copy, to, owner).unwrap_err().to_string();
    assert!(e.contains("holds checkpoints already"), "{e}");
    // A copy with one byte changed in a state file is refused, and nothing is written.
    let state = copy.join(files.state_files[0].file_name().unwrap());
    let mut b = fs.contents(&state).unwrap();
    let at = b.len() - 3;
    b[at] ^= 1;
    fs.put(&state, b);
    let other = Path::new("/c/state/ckpt");
    assert!(copy_rebased(Arc::new(fs.clone()), c.clone(), copy, other, owner).is_err());
    assert!(fs.list(other).map(|n| n.is_empty()).unwrap_or(true));
    // Another pipeline's checkpoint is not restored under this one.
    let e = copy_rebased(Arc::new(fs.clone()), c, to, Path::new("/d/ckpt"), Owner::of("line2")).unwrap_err();
    assert!(e.to_string().contains("another"), "{e}");
}
