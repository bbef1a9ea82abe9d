//! A pool of decode threads for one source. The source cuts its input into pieces (whole lines, a
//! range of generated events); the pool decodes them on worker threads and hands the decoded
//! batches back in the order the pieces were cut, so the rows reach the lateness rule in arrival
//! order and results do not depend on the number of threads.
//!
//! Owns the worker threads, one [`RowDecoder`] each, and the bound on pieces in flight. Never reads
//! input, judges lateness or touches pipeline state: it only turns pieces into batches.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use arrow::array::RecordBatch;

use crate::error::{EngineError, Result};
use crate::format::decode::RowDecoder;

/// Pieces queued per worker, at most (one being decoded, one waiting), so the pool holds at most
/// `threads * PIECES_PER_WORKER` pieces at once.
pub const PIECES_PER_WORKER: usize = 2;

/// Most decode threads a source may have.
pub const MAX_DECODE_THREADS: usize = 64;

/// How a worker turns one piece into rows.
pub trait PieceDecoder: Send + 'static {
    type Piece: Send + 'static;
    /// Decodes `piece` into `dec` (rows and error rows).
    fn decode(&mut self, piece: &Self::Piece, dec: &mut RowDecoder);
}

/// One decoded piece: the piece itself (for its bookkeeping and to reuse its buffers) and what it
/// decoded to.
pub struct Decoded<P> {
    pub piece: P,
    pub rows: Option<RecordBatch>,
    pub errors: Option<RecordBatch>,
}

impl<P> Decoded<P> {
    /// Hands the decoded rows to the source's decoder, as if it had decoded them itself.
    pub fn hand_over(&mut self, dec: &mut RowDecoder) {
        if let Some(r) = self.rows.take() {
            dec.put_ready(r);
        }
        if let Some(e) = self.errors.take() {
            dec.errors.put_ready(e);
        }
    }
}

struct Worker<P> {
    jobs: SyncSender<P>,
    done: Receiver<Result<Decoded<P>>>,
    handle: Option<JoinHandle<()>>,
}

/// Decode threads that return pieces in submission order: piece k goes to worker `k % threads`,
/// each worker is first in, first out, and results are taken from the workers in the same turn.
pub struct DecodePool<P: Send + 'static> {
    workers: Vec<Worker<P>>,
    next_submit: usize,
    next_take: usize,
    in_flight: usize,
}

impl<P: Send + 'static> DecodePool<P> {
    /// Starts `threads` workers, each with a decoder made by `decoder` and a [`RowDecoder`] like
    /// `template`.
    pub fn start<D>(name: &str, threads: usize, template: &RowDecoder, mut decoder: impl FnMut() -> D) -> Result<Self>
    where
        D: PieceDecoder<Piece = P>,
    {
        assert!((1..=MAX_DECODE_THREADS).contains(&threads), "decode threads checked where configured");
        let mut workers = Vec::with_capacity(threads);
        for k in 0..threads {
            let (jobs, job_rx) = mpsc::sync_channel::<P>(PIECES_PER_WORKER);
            let (done_tx, done) = mpsc::channel();
            let (mut d, mut rows) = (decoder(), template.fresh_like());
            let handle = std::thread::Builder::new()
                .name(format!("eddy-decode-{k}"))
                .spawn(move || work(&mut d, &mut rows, job_rx, done_tx))
                .map_err(|e| EngineError::Internal(format!("{name}: cannot start a decode thread: {e}")))?;
            workers.push(Worker { jobs, done, handle: Some(handle) });
        }
        Ok(DecodePool { workers, next_submit: 0, next_take: 0, in_flight: 0 })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another piece may be submitted without waiting.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.workers.len() * PIECES_PER_WORKER
    }

    /// Queues a piece; call only when [`DecodePool::has_room`].
    pub fn submit(&mut self, piece: P) -> Result<()> {
        debug_assert!(self.has_room());
        let w = &self.workers[self.next_submit];
        w.jobs.send(piece).map_err(|_| gone())?;
        self.next_submit = (self.next_submit + 1) % self.workers.len();
        self.in_flight += 1;
        Ok(())
    }

    /// The oldest piece submitted and not yet taken, decoded (waits for it); `None` when none is
    /// in flight.
    pub fn take(&mut self) -> Result<Option<Decoded<P>>> {
        if self.in_flight == 0 {
            return Ok(None);
        }
        let w = &self.workers[self.next_take];
        let d = w.done.recv().map_err(|_| gone())??;
        self.next_take = (self.next_take + 1) % self.workers.len();
        self.in_flight -= 1;
        Ok(Some(d))
    }
}

fn gone() -> EngineError {
    EngineError::Internal("a decode thread stopped unexpectedly".into())
}

fn work<D: PieceDecoder>(
    d: &mut D,
    dec: &mut RowDecoder,
    jobs: Receiver<D::Piece>,
    done: Sender<Result<Decoded<D::Piece>>>,
) {
    while let Ok(piece) = jobs.recv() {
        d.decode(&piece, dec);
        let out = finish(dec).map(|(rows, errors)| Decoded { piece, rows, errors });
        if done.send(out).is_err() {
            return;
        }
    }
}

fn finish(dec: &mut RowDecoder) -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
    Ok((dec.finish()?, dec.errors.finish()?))
}

impl<P: Send + 'static> Drop for DecodePool<P> {
    fn drop(&mut self) {
        // Closing the job channels ends the workers once they finish what they hold.
        let handles: Vec<_> = self.workers.iter_mut().filter_map(|w| w.handle.take()).collect();
        self.workers.clear();
        for h in handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::decode::DecodeColumn;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Int64Type};

    /// Decodes a range of numbers as rows; odd pieces take longer, to shuffle finishing order.
    struct Numbers;
    impl PieceDecoder for Numbers {
        type Piece = (i64, i64);
        fn decode(&mut self, &(from, to): &(i64, i64), dec: &mut RowDecoder) {
            if from % 2 == 1 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            for n in from..to {
                dec.begin_row();
                dec.set(0, crate::format::columns::Value::I64(n));
                dec.end_row(b"", 0);
            }
        }
    }

    fn template() -> RowDecoder {
        let col = DecodeColumn { name: "n".into(), data_type: DataType::Int64, nullable: false, metadata_key: None };
        RowDecoder::new(vec![col], None).unwrap()
    }

    #[test]
    fn pieces_come_back_in_submission_order_for_any_thread_count() {
        for threads in [1, 2, 3, 5] {
            let mut pool = DecodePool::start("t", threads, &template(), || Numbers).unwrap();
            let (mut next, mut got) = (0i64, Vec::new());
            while next < 200 || pool.in_flight() > 0 {
                while next < 200 && pool.has_room() {
                    pool.submit((next, next + 1 + next % 3)).unwrap();
                    next += 1 + next % 3;
                }
                let d = pool.take().unwrap().unwrap();
                let rows = d.rows.unwrap();
                got.extend(rows.column(0).as_primitive::<Int64Type>().values().iter().copied());
            }
            assert_eq!(got, (0..got.len() as i64).collect::<Vec<_>>(), "threads {threads}");
            assert!(got.len() >= 200);
            assert!(pool.take().unwrap().is_none());
        }
    }

    #[test]
    fn handed_over_rows_come_out_of_the_source_decoder() {
        let mut pool = DecodePool::start("t", 2, &template(), || Numbers).unwrap();
        pool.submit((10, 13)).unwrap();
        let mut dec = template();
        pool.take().unwrap().unwrap().hand_over(&mut dec);
        assert_eq!(dec.rows(), 3);
        let b = dec.finish().unwrap().unwrap();
        assert_eq!(b.column(0).as_primitive::<Int64Type>(), &Int64Array::from(vec![10, 11, 12]));
        assert_eq!(dec.rows(), 0);
        assert!(dec.finish().unwrap().is_none());
    }
}
