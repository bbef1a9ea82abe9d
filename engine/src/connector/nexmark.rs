//! `connector = 'nexmark'`: the Nexmark benchmark's online-auction events (people, auctions, bids),
//! generated deterministically, as JSON payloads decoded by the same path as real messages.
//!
//! The model follows the published Nexmark generator: event `n` of the global sequence is a
//! person, an auction or a bid by its place in each run of 50 (1 : 3 : 46); ids are dense and
//! count from 1000; bids go to a hot auction (and come from a hot bidder) with the configured
//! ratios, else to one of the auctions still in flight; prices are log-uniform. Every event is a
//! pure function of the configuration and its number (its random stream is seeded by both), so
//! one source per stream reads the same history as one combined generator, a restart resumes
//! from a number alone, and the JSON written by [`write_event`] is the same events a pipeline
//! reads. Event times advance by `1 / event_rate` seconds per event, in order.
//!
//! Owns the generator only; it never reads files or the clock (except when paced).

use std::io::Write;
use std::time::Instant;

use super::datagen::Rng;
use super::{Poll, SourceReader};
use crate::error::{EngineError, Result};
use crate::format::decode::RowDecoder;
use crate::format::json;
use crate::sql::ddl::Options;

crate::connector_options! {
    /// What a `nexmark` source takes (docs/connectors.md).
    pub(crate) struct NexmarkOptions {
        stream: String = "stream",
        seed: u64 = "seed",
        events: u64 = "events",
        event_rate: u64 = "event_rate",
        pace: bool = "pace",
        start: String = "start",
        hot_auction_ratio: u64 = "hot_auction_ratio",
        hot_seller_ratio: u64 = "hot_seller_ratio",
        hot_bidder_ratio: u64 = "hot_bidder_ratio",
        hot_channel_ratio: u64 = "hot_channel_ratio",
        active_people: u64 = "active_people",
        in_flight_auctions: u64 = "in_flight_auctions",
        person_bytes: u64 = "person_bytes",
        auction_bytes: u64 = "auction_bytes",
        bid_bytes: u64 = "bid_bytes",
    }
}

/// Events per run: 1 person, 3 auctions, 46 bids.
const RUN: u64 = 50;
const PERSONS_PER_RUN: u64 = 1;
const AUCTIONS_PER_RUN: u64 = 3;
const FIRST_ID: u64 = 1000;
/// Hot sellers, bidders and auctions are every 100th of their kind.
const HOT_STRIDE: u64 = 100;
/// A bid or auction may name a person or auction this many ids ahead of the newest one.
const ID_LEAD: u64 = 10;
const FIRST_CATEGORY: u64 = 10;
const CATEGORIES: u64 = 5;

const FIRST_NAMES: &[&str] =
    &["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: &[&str] = &["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const CITIES: &[&str] =
    &["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const HOT_CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];
/// Non-hot bids come from this many other channels.
const CHANNELS: u64 = 10_000;

/// Which of the three Nexmark streams an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Person,
    Auction,
    Bid,
}

impl Stream {
    pub fn parse(s: &str) -> Option<Stream> {
        match s.to_ascii_lowercase().as_str() {
            "person" => Some(Stream::Person),
            "auction" => Some(Stream::Auction),
            "bid" => Some(Stream::Bid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stream::Person => "person",
            Stream::Auction => "auction",
            Stream::Bid => "bid",
        }
    }

    /// The stream of global event `n`.
    pub fn of(n: u64) -> Stream {
        match n % RUN {
            0 => Stream::Person,
            1..=3 => Stream::Auction,
            _ => Stream::Bid,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    pub seed: u64,
    /// Events in all three streams together; `None`: never ends.
    pub events: Option<u64>,
    /// Events per second of event time (all streams together).
    pub event_rate: u64,
    /// Emit each event when its time comes on the wall clock (event times then start now).
    pub pace: bool,
    /// Event time of event 0 when not paced (epoch ms).
    pub start_ms: i64,
    /// One bid in `hot_auction_ratio` goes to any in-flight auction, the others to a hot one
    /// (likewise sellers of auctions, bidders and channels of bids).
    pub hot_auction_ratio: u64,
    pub hot_seller_ratio: u64,
    pub hot_bidder_ratio: u64,
    pub hot_channel_ratio: u64,
    pub active_people: u64,
    pub in_flight_auctions: u64,
    /// Average JSON size of each kind, padded with `extra`.
    pub person_bytes: usize,
    pub auction_bytes: usize,
    pub bid_bytes: usize,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            seed: 42,
            events: None,
            event_rate: 10_000,
            pace: false,
            start_ms: 1_772_352_000_000, // 2026-03-01T08:00:00Z
            hot_auction_ratio: 2,
            hot_seller_ratio: 4,
            hot_bidder_ratio: 4,
            hot_channel_ratio: 2,
            active_people: 1000,
            in_flight_auctions: 100,
            person_bytes: 200,
            auction_bytes: 500,
            bid_bytes: 100,
        }
    }
}

impl NexmarkConfig {
    pub fn from_options(ctx: &str, o: &Options) -> Result<(Self, Stream)> {
        let o = NexmarkOptions::read(ctx, super::sql_only(o))?;
        let stream = match &o.stream {
            None => {
                return Err(EngineError::options(
                    ctx,
                    "connector 'nexmark' needs option 'stream' (person, auction or bid)",
                ))
            }
            Some(s) => Stream::parse(s).ok_or_else(|| {
                EngineError::options(ctx, format!("stream '{s}': valid streams are person, auction, bid"))
            })?,
        };
        let d = NexmarkConfig::default();
        let positive = |k: &str, v: Option<u64>, default: u64| -> Result<u64> {
            match v {
                None => Ok(default),
                Some(0) => Err(EngineError::options(ctx, format!("option '{k}' must be at least 1"))),
                Some(v) => Ok(v),
            }
        };
        let bytes = |k: &str, v: Option<u64>, default: usize| -> Result<usize> {
            Ok(usize::try_from(positive(k, v, default as u64)?).unwrap_or(usize::MAX))
        };
        let start_ms = match &o.start {
            None => d.start_ms,
            Some(s) => crate::time::parse_timestamp_ms(s)
                .ok_or_else(|| EngineError::options(ctx, format!("option 'start': '{s}' is not a timestamp")))?,
        };
        let cfg = NexmarkConfig {
            seed: o.seed.unwrap_or(d.seed),
            events: o.events,
            event_rate: positive("event_rate", o.event_rate, d.event_rate)?,
            pace: o.pace.unwrap_or(false),
            start_ms,
            hot_auction_ratio: positive("hot_auction_ratio", o.hot_auction_ratio, d.hot_auction_ratio)?,
            hot_seller_ratio: positive("hot_seller_ratio", o.hot_seller_ratio, d.hot_seller_ratio)?,
            hot_bidder_ratio: positive("hot_bidder_ratio", o.hot_bidder_ratio, d.hot_bidder_ratio)?,
            hot_channel_ratio: positive("hot_channel_ratio", o.hot_channel_ratio, d.hot_channel_ratio)?,
            active_people: positive("active_people", o.active_people, d.active_people)?,
            in_flight_auctions: positive("in_flight_auctions", o.in_flight_auctions, d.in_flight_auctions)?,
            person_bytes: bytes("person_bytes", o.person_bytes, d.person_bytes)?,
            auction_bytes: bytes("auction_bytes", o.auction_bytes, d.auction_bytes)?,
            bid_bytes: bytes("bid_bytes", o.bid_bytes, d.bid_bytes)?,
        };
        Ok((cfg, stream))
    }

    /// Event time of event `n`, from `start` (epoch ms).
    fn time_ms(&self, start: i64, n: u64) -> i64 {
        start + (n as u128 * 1000 / self.event_rate as u128) as i64
    }

    /// How long an auction stays open: about the time in which `in_flight_auctions` new ones
    /// start, so that many are open at once.
    fn auction_length_ms(&self, rng: &mut Rng) -> i64 {
        let auctions_per_s = (self.event_rate * AUCTIONS_PER_RUN) as f64 / RUN as f64;
        let mean_ms = self.in_flight_auctions as f64 / auctions_per_s * 1000.0;
        (mean_ms * (0.5 + rng.f64())).max(1.0) as i64
    }
}

/// People created before event `n`.
fn persons_before(n: u64) -> u64 {
    n / RUN * PERSONS_PER_RUN + (n % RUN).min(PERSONS_PER_RUN)
}

/// Auctions created before event `n`.
fn auctions_before(n: u64) -> u64 {
    n / RUN * AUCTIONS_PER_RUN + (n % RUN).saturating_sub(PERSONS_PER_RUN).min(AUCTIONS_PER_RUN)
}

/// The random stream of event `n`.
fn event_rng(seed: u64, n: u64) -> Rng {
    let mut r = Rng::new(seed ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64();
    r
}

/// A log-uniform price in cents, 1.00 to 1,000,000.00.
fn price(rng: &mut Rng) -> u64 {
    (10f64.powf(rng.f64() * 6.0) * 100.0).round() as u64
}

/// A person id any event may name: one of the newest `active_people` (or a few not yet created).
fn some_person(cfg: &NexmarkConfig, rng: &mut Rng, n: u64) -> u64 {
    let people = persons_before(n).max(1);
    let active = people.min(cfg.active_people);
    FIRST_ID + people - active + rng.below(active + ID_LEAD)
}

fn hot(ratio: u64, rng: &mut Rng) -> bool {
    rng.below(ratio) > 0
}

/// Pads `out` (holding an object without its closing brace) with an `extra` field so that the
/// object is about `target` bytes, then closes it.
fn close_with_extra(out: &mut Vec<u8>, begin: usize, target: usize, rng: &mut Rng) {
    out.extend_from_slice(b", \"extra\": \"");
    let have = out.len() - begin + 2;
    let pad = target.saturating_sub(have);
    let mut bits = rng.next_u64();
    for i in 0..pad {
        if i % 12 == 11 {
            bits = rng.next_u64();
        }
        out.push(b'a' + (bits % 26) as u8);
        bits /= 26;
    }
    out.extend_from_slice(b"\"}");
}

/// Appends event `n` as one JSON object (no newline) to `out`; `start` is event 0's time.
/// Returns the event's stream.
pub fn write_event(cfg: &NexmarkConfig, start: i64, n: u64, out: &mut Vec<u8>) -> Stream {
    let stream = Stream::of(n);
    let mut rng = event_rng(cfg.seed, n);
    let ts = cfg.time_ms(start, n);
    let begin = out.len();
    // Writing to a Vec cannot fail.
    let _ = match stream {
        Stream::Person => {
            let id = FIRST_ID + persons_before(n);
            let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
            let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
            let city = CITIES[rng.below(CITIES.len() as u64) as usize];
            let state = STATES[rng.below(STATES.len() as u64) as usize];
            let (c1, c2, c3, c4) = (rng.below(10_000), rng.below(10_000), rng.below(10_000), rng.below(10_000));
            let _ = write!(out, "{{\"id\": {id}, \"name\": \"{first} {last}\", \"email_address\": \"");
            // The address is the name in lower case, written in place (no allocation per event).
            out.extend(first.bytes().map(|b| b.to_ascii_lowercase()));
            out.push(b'@');
            out.extend(last.bytes().map(|b| b.to_ascii_lowercase()));
            write!(
                out,
                ".com\", \"credit_card\": \"{c1:04} {c2:04} {c3:04} {c4:04}\", \"city\": \"{city}\", \
                 \"state\": \"{state}\", \"date_time\": \""
            )
        }
        Stream::Auction => {
            let id = FIRST_ID + auctions_before(n);
            let seller = if hot(cfg.hot_seller_ratio, &mut rng) {
                FIRST_ID + persons_before(n).saturating_sub(1) / HOT_STRIDE * HOT_STRIDE
            } else {
                some_person(cfg, &mut rng, n)
            };
            let category = FIRST_CATEGORY + rng.below(CATEGORIES);
            let initial = price(&mut rng);
            let reserve = initial + price(&mut rng);
            let expires = ts + cfg.auction_length_ms(&mut rng);
            let item = rng.below(100_000);
            let _ = write!(
                out,
                "{{\"id\": {id}, \"item_name\": \"item-{item}\", \"description\": \"lot {item} of category {category}\", \
                 \"initial_bid\": {initial}, \"reserve\": {reserve}, \"expires\": \""
            );
            crate::time::write_sql_ms(expires, out);
            write!(out, "\", \"seller\": {seller}, \"category\": {category}, \"date_time\": \"")
        }
        Stream::Bid => {
            let newest = auctions_before(n).max(1) - 1;
            let auction = FIRST_ID
                + if hot(cfg.hot_auction_ratio, &mut rng) {
                    newest / HOT_STRIDE * HOT_STRIDE
                } else {
                    let oldest = newest.saturating_sub(cfg.in_flight_auctions);
                    oldest + rng.below(newest - oldest + 1 + ID_LEAD)
                };
            let bidder = if hot(cfg.hot_bidder_ratio, &mut rng) {
                FIRST_ID + persons_before(n).saturating_sub(1) / HOT_STRIDE * HOT_STRIDE + 1
            } else {
                some_person(cfg, &mut rng, n)
            };
            let price = price(&mut rng);
            let (a, b, c) = (rng.below(1 << 20), rng.below(1 << 20), rng.below(1 << 20));
            let _ = write!(out, "{{\"auction\": {auction}, \"bidder\": {bidder}, \"price\": {price}, \"channel\": \"");
            if hot(cfg.hot_channel_ratio, &mut rng) {
                let ch = HOT_CHANNELS[rng.below(HOT_CHANNELS.len() as u64) as usize];
                write!(out, "{ch}\", \"url\": \"https://www.nexmark.com/{a:x}/{b:x}/{c:x}/item.htm?query=1\", \"date_time\": \"")
            } else {
                let ch = rng.below(CHANNELS);
                write!(
                    out,
                    "channel-{ch}\", \"url\": \"https://www.nexmark.com/{a:x}/{b:x}/{c:x}/item.htm?query=1&channel_id={ch}\", \
                     \"date_time\": \""
                )
            }
        }
    };
    crate::time::write_sql_ms(ts, out);
    out.push(b'"');
    let target = match stream {
        Stream::Person => cfg.person_bytes,
        Stream::Auction => cfg.auction_bytes,
        Stream::Bid => cfg.bid_bytes,
    };
    close_with_extra(out, begin, target, &mut rng);
    stream
}

/// The first event number at or after `n` that belongs to `stream`.
fn next_of(stream: Stream, n: u64) -> u64 {
    let (run, at) = (n / RUN * RUN, n % RUN);
    let (lo, hi) = match stream {
        Stream::Person => (0, 0),
        Stream::Auction => (1, 3),
        Stream::Bid => (4, RUN - 1),
    };
    if at < lo {
        run + lo
    } else if at <= hi {
        n
    } else {
        run + RUN + lo
    }
}

/// One Nexmark stream as a source.
pub struct Nexmark {
    cfg: NexmarkConfig,
    stream: Stream,
    /// Next global event number to consider.
    next: u64,
    /// Event 0's time.
    start_ms: i64,
    started: Instant,
    line: Vec<u8>,
}

impl Nexmark {
    pub fn new(cfg: NexmarkConfig, stream: Stream) -> Self {
        let start_ms = if cfg.pace { crate::time::now_ms() } else { cfg.start_ms };
        Nexmark { stream, next: 0, start_ms, started: Instant::now(), line: Vec::with_capacity(1024), cfg }
    }
}

impl SourceReader for Nexmark {
    fn poll(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<Poll> {
        let end = self.cfg.events.unwrap_or(u64::MAX);
        let due = if self.cfg.pace {
            // Only events whose time has come on the wall clock.
            let elapsed_ms = self.started.elapsed().as_millis();
            (elapsed_ms * self.cfg.event_rate as u128 / 1000).min(end as u128) as u64
        } else {
            end
        };
        let now = crate::time::now_ms();
        let mut rows = 0;
        while rows < max_rows {
            let n = next_of(self.stream, self.next);
            if n >= due {
                self.next = n.min(due);
                break;
            }
            self.line.clear();
            write_event(&self.cfg, self.start_ms, n, &mut self.line);
            json::decode_json(dec, &self.line, now);
            self.next = n + 1;
            rows += 1;
        }
        if rows == 0 && next_of(self.stream, self.next) >= end {
            return Ok(Poll::End);
        }
        Ok(if rows == 0 { Poll::Idle } else { Poll::Rows })
    }

    fn bounded(&self) -> bool {
        self.cfg.events.is_some()
    }

    /// The next event number, and event 0's time (paced sources start at wall-clock time).
    fn position(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(16);
        p.extend_from_slice(&self.next.to_le_bytes());
        p.extend_from_slice(&self.start_ms.to_le_bytes());
        p
    }

    fn resume(&mut self, position: &[u8], _dec: &mut RowDecoder) -> Result<()> {
        if position.is_empty() {
            return Ok(());
        }
        self.next = super::position_u64(position, 0)?;
        self.start_ms = super::position_u64(position, 8)? as i64;
        if self.cfg.pace {
            // Keep the pace: as if the events so far had come at their times.
            let behind_ms = (self.next as u128 * 1000 / self.cfg.event_rate as u128) as u64;
            self.started =
                Instant::now().checked_sub(std::time::Duration::from_millis(behind_ms)).unwrap_or(self.started);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_split_runs_of_fifty_one_three_forty_six() {
        let counts = (0..RUN).fold([0; 3], |mut c, n| {
            c[Stream::of(n) as usize] += 1;
            c
        });
        assert_eq!(counts, [1, 3, 46]);
        assert_eq!((persons_before(50), auctions_before(50)), (1, 3));
        assert_eq!((persons_before(51), auctions_before(52)), (2, 4));
        for s in [Stream::Person, Stream::Auction, Stream::Bid] {
            for n in 0..200 {
                let m = next_of(s, n);
                assert!(m >= n && Stream::of(m) == s);
                assert!((n..m).all(|k| Stream::of(k) != s), "{s:?} {n}");
            }
        }
    }

    #[test]
    fn events_are_valid_json_of_about_the_configured_size_and_reproducible() {
        let cfg = NexmarkConfig::default();
        let (mut sizes, mut counts) = ([0usize; 3], [0usize; 3]);
        for n in 0..5_000 {
            let mut a = Vec::new();
            let s = write_event(&cfg, cfg.start_ms, n, &mut a);
            let mut b = Vec::new();
            write_event(&cfg, cfg.start_ms, n, &mut b);
            assert_eq!(a, b);
            let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
            assert!(v["date_time"].as_str().unwrap().starts_with("2026-03-01 08:00:00"), "{v}");
            sizes[s as usize] += a.len();
            counts[s as usize] += 1;
            if s == Stream::Bid {
                let auction = v["auction"].as_u64().unwrap();
                assert!(auction >= FIRST_ID && auction <= FIRST_ID + auctions_before(n) + ID_LEAD);
            }
        }
        for (i, target) in [cfg.person_bytes, cfg.auction_bytes, cfg.bid_bytes].into_iter().enumerate() {
            let avg = sizes[i] / counts[i];
            assert!(avg + 2 >= target && avg <= target + 130, "stream {i}: {avg} bytes on average");
        }
    }

    fn bid_decoder() -> RowDecoder {
        use crate::format::decode::DecodeColumn;
        use arrow::datatypes::DataType;
        let col =
            |n: &str, t: DataType| DecodeColumn { name: n.into(), data_type: t, nullable: false, metadata_key: None };
        let cols = vec![
            col("auction", DataType::Int64),
            col("price", DataType::Int64),
            col("date_time", crate::types::TS_TYPE),
        ];
        RowDecoder::new(cols, Some(2)).unwrap()
    }

    fn drain(src: &mut Nexmark, dec: &mut RowDecoder, polls: usize) -> Vec<String> {
        let mut rows = vec![];
        for _ in 0..polls {
            if src.poll(dec, 7).unwrap() == Poll::End {
                break;
            }
            if let Some(b) = dec.finish().unwrap() {
                let cols = (0..b.num_columns())
                    .map(|c| {
                        arrow::util::display::ArrayFormatter::try_new(b.column(c).as_ref(), &Default::default())
                            .unwrap()
                    })
                    .collect::<Vec<_>>();
                rows.extend(
                    (0..b.num_rows())
                        .map(|r| cols.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join(",")),
                );
            }
        }
        rows
    }

    #[test]
    fn a_stream_resumed_from_its_position_continues_exactly_and_ends_at_the_event_count() {
        let cfg = NexmarkConfig { events: Some(1_000), ..NexmarkConfig::default() };
        let mut dec = bid_decoder();
        let whole = drain(&mut Nexmark::new(cfg.clone(), Stream::Bid), &mut dec, usize::MAX);
        assert_eq!(whole.len(), 920);
        let mut first = Nexmark::new(cfg.clone(), Stream::Bid);
        let mut rows = drain(&mut first, &mut dec, 10);
        let mut second = Nexmark::new(cfg, Stream::Bid);
        second.resume(&first.position(), &mut dec).unwrap();
        rows.extend(drain(&mut second, &mut dec, usize::MAX));
        assert_eq!(rows, whole);
        assert_eq!(second.poll(&mut dec, 7).unwrap(), Poll::End);
    }
}
