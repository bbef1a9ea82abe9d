//! `connector = 'datagen'`: deterministic generated input, as JSON payloads decoded by the same path
//! as real messages (so bad rows really land in ERRORS).
//!
//! Shapes: `iot` (device_id, site, temp with a slow daily-like cycle and rare +8° spikes, humidity, ts) and `trades` (symbol, price, volume, ts).
//! The same seed gives the same rows. With `rate` the rows come at that pace with wall-clock event
//! times; without it they come as fast as possible with event times from `start` on. `rows` bounds
//! the source; without it the source never ends.

use std::io::Write;
use std::time::{Duration, Instant};

use super::{Poll, SourceReader};
use crate::error::{EngineError, Result};
use crate::format::decode::RowDecoder;
use crate::format::json;
use crate::sql::ddl::Options;

crate::connector_options! {
    /// What a `datagen` source takes (docs/connectors.md).
    pub(crate) struct DatagenOptions {
        shape: String = "shape",
        seed: u64 = "seed",
        rows: u64 = "rows",
        rate: f64 = "rate",
        devices: u32 = "devices",
        start: String = "start",
        interval: Duration = "interval",
        disorder: Duration = "disorder",
        late_ratio: f64 = "late_ratio",
        error_ratio: f64 = "error_ratio",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Iot,
    Trades,
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Clone)]
pub struct DatagenConfig {
    pub shape: Shape,
    pub seed: u64,
    pub rows: Option<u64>,
    /// Rows per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Devices (iot) or symbols (trades).
    pub devices: u32,
    /// Event time of the first row when not paced (epoch ms).
    pub start: i64,
    /// Event-time step between rows when not paced (ms).
    pub interval: i64,
    /// Most a row's event time may lag the newest one (ms).
    pub disorder: i64,
    pub late_ratio: f64,
    pub error_ratio: f64,
}

impl DatagenConfig {
    pub fn from_options(ctx: &str, o: &Options) -> Result<Self> {
        let o = DatagenOptions::read(ctx, super::sql_only(o))?;
        let shape = match o.shape.as_deref().unwrap_or("iot").to_ascii_lowercase().as_str() {
            "iot" => Shape::Iot,
            "trades" => Shape::Trades,
            other => return Err(EngineError::options(ctx, format!("shape '{other}': valid shapes are iot, trades"))),
        };
        let ratio = |k: &str, v: Option<f64>| -> Result<f64> {
            let v = v.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&v) {
                return Err(EngineError::options(ctx, format!("option '{k}' must be between 0 and 1")));
            }
            Ok(v)
        };
        let start = match &o.start {
            None => 1_772_352_000_000, // 2026-03-01T08:00:00Z
            Some(s) => crate::time::parse_timestamp_ms(s)
                .ok_or_else(|| EngineError::options(ctx, format!("option 'start': '{s}' is not a timestamp")))?,
        };
        let ms = |d: Option<Duration>, default: i64| d.map_or(default, |d| d.as_millis().min(i64::MAX as u128) as i64);
        Ok(DatagenConfig {
            shape,
            seed: o.seed.unwrap_or(42),
            rows: o.rows,
            rate: o.rate.filter(|r| *r > 0.0),
            devices: o.devices.unwrap_or(8).max(1),
            start,
            interval: ms(o.interval, 100),
            disorder: ms(o.disorder, 2_000),
            late_ratio: ratio("late_ratio", o.late_ratio)?,
            error_ratio: ratio("error_ratio", o.error_ratio)?,
        })
    }
}

pub struct Datagen {
    cfg: DatagenConfig,
    rng: Rng,
    seq: u64,
    started: Instant,
    /// Newest event time generated so far.
    newest: i64,
    prices: Vec<f64>,
    line: Vec<u8>,
}

impl Datagen {
    pub fn new(cfg: DatagenConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let prices = (0..cfg.devices).map(|_| 20.0 + rng.f64() * 480.0).collect();
        Datagen { rng, seq: 0, started: Instant::now(), newest: i64::MIN, prices, line: Vec::with_capacity(256), cfg }
    }

    /// Writes the next payload into `self.line`.
    fn next_payload(&mut self) {
        let cfg = &self.cfg;
        let rng = &mut self.rng;
        let base = match cfg.rate {
            Some(_) => crate::time::now_ms(),
            None => cfg.start + self.seq as i64 * cfg.interval,
        };
        let mut ts = base - rng.below(cfg.disorder.max(0) as u64 + 1) as i64;
        self.newest = self.newest.max(base);
        let r = rng.f64();
        let late = r < cfg.late_ratio;
        if late {
            ts = self.newest - cfg.disorder - 1_000 - rng.below(30_000) as i64;
        }
        let who = rng.below(cfg.devices as u64) as usize;
        self.line.clear();
        let error = rng.f64() < cfg.error_ratio;
        let ts_text = crate::time::rfc3339_ms(ts);
        match cfg.shape {
            Shape::Iot => {
                let phase = (ts as f64 / 60_000.0 + who as f64).sin();
                // Occasional spikes (0.2% of readings) give alerts something to find.
                let spike = if rng.f64() < 0.002 { 8.0 } else { 0.0 };
                let temp =
                    20.0 + (who % 7) as f64 + 4.0 * phase + rng.f64() * 2.0 + spike + if late { 100.0 } else { 0.0 };
                let humidity = 30.0 + rng.f64() * 50.0;
                let _ = if error {
                    match rng.below(3) {
                        0 => write!(
                            self.line,
                            "{{\"device_id\": \"dev-{who:02}\", \"temp\": \"hot\", \"ts\": \"{ts_text}\"}}"
                        ),
                        1 => write!(self.line, "{{\"temp\": {temp:.2}, \"ts\": \"{ts_text}\"}}"),
                        _ => write!(self.line, "{{\"device_id\": \"dev-{who:02}\", \"temp\": {temp:.2}"),
                    }
                } else {
                    write!(
                        self.line,
                        "{{\"device_id\": \"dev-{who:02}\", \"site\": \"site-{}\", \"temp\": {temp:.2}, \"humidity\": {humidity:.1}, \"ts\": \"{ts_text}\"}}",
                        who % 3
                    )
                };
            }
            Shape::Trades => {
                let p = &mut self.prices[who];
                *p = (*p * (1.0 + (rng.f64() - 0.5) * 0.002)).max(0.01);
                let volume = 1 + rng.below(500);
                let symbol = symbol_name(who);
                let _ = if error {
                    write!(
                        self.line,
                        "{{\"symbol\": \"{symbol}\", \"price\": \"n/a\", \"volume\": {volume}, \"ts\": \"{ts_text}\"}}"
                    )
                } else {
                    write!(
                        self.line,
                        "{{\"symbol\": \"{symbol}\", \"price\": {:.4}, \"volume\": {volume}, \"ts\": \"{ts_text}\"}}",
                        *p
                    )
                };
            }
        }
        self.seq += 1;
    }
}

/// AAA, BBB, ..., ZZZ, then AAB, ...
fn symbol_name(i: usize) -> String {
    if i < 26 {
        let c = (b'A' + i as u8) as char;
        return format!("{c}{c}{c}");
    }
    let a = (b'A' + (i / 676 % 26) as u8) as char;
    let b = (b'A' + (i / 26 % 26) as u8) as char;
    let c = (b'A' + (i % 26) as u8) as char;
    format!("{a}{b}{c}")
}

impl SourceReader for Datagen {
    fn poll(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<Poll> {
        let mut budget = max_rows as u64;
        if let Some(total) = self.cfg.rows {
            if self.seq >= total {
                return Ok(Poll::End);
            }
            budget = budget.min(total - self.seq);
        }
        if let Some(rate) = self.cfg.rate {
            let due = (self.started.elapsed().as_secs_f64() * rate) as u64;
            budget = budget.min(due.saturating_sub(self.seq));
            if budget == 0 {
                return Ok(Poll::Idle);
            }
        }
        let now = crate::time::now_ms();
        for _ in 0..budget {
            self.next_payload();
            json::decode_json(dec, &self.line, now);
        }
        Ok(Poll::Rows)
    }

    fn bounded(&self) -> bool {
        self.cfg.rows.is_some()
    }

    /// Generator state: rows made, random state, newest time, current prices.
    fn position(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(24 + 8 * self.prices.len());
        p.extend_from_slice(&self.seq.to_le_bytes());
        p.extend_from_slice(&self.rng.0.to_le_bytes());
        p.extend_from_slice(&self.newest.to_le_bytes());
        self.prices.iter().for_each(|x| p.extend_from_slice(&x.to_bits().to_le_bytes()));
        p
    }

    fn resume(&mut self, position: &[u8], _dec: &mut RowDecoder) -> Result<()> {
        if position.is_empty() {
            return Ok(());
        }
        self.seq = super::position_u64(position, 0)?;
        self.rng.0 = super::position_u64(position, 8)?;
        self.newest = super::position_u64(position, 16)? as i64;
        for (i, p) in self.prices.iter_mut().enumerate() {
            *p = f64::from_bits(super::position_u64(position, 24 + 8 * i)?);
        }
        if let Some(rate) = self.cfg.rate {
            // Keep the pace: as if the rows made so far had come at `rate` until now.
            self.started = Instant::now()
                .checked_sub(std::time::Duration::from_secs_f64(self.seq as f64 / rate))
                .unwrap_or(self.started);
        }
        Ok(())
    }
}
