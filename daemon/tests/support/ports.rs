//! Loopback ports for the servers the tests start (Mosquitto, Kafka, SeaweedFS, eddyd, eddy-hub).
//!
//! Never from the kernel's ephemeral range: a port the kernel hands out for `bind(0)` is free only
//! until the next outgoing connection takes it, and servers such as SeaweedFS open dozens of
//! connections before their last listener binds. Ports come from below that range, in a stretch
//! chosen by the process id and handed out once per process, each checked to be bindable.
//! This file has no dependencies: the benchmarks include it too.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out (above the well-known and most registered service ports).
const LOW_PORT: u32 = 12_000;

/// The next candidate, as an offset from `LOW_PORT`; `u32::MAX` until first use.
static NEXT_OFFSET: AtomicU32 = AtomicU32::new(u32::MAX);

/// The start of the kernel's ephemeral range (the first number of `ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32_768)
}

/// A loopback port no server of this process was given before, free at the time of the call.
pub fn free_port() -> u16 {
    let span = ephemeral_low().saturating_sub(LOW_PORT).max(1_000);
    // Processes run one after another mostly; a pid-chosen start keeps two that overlap apart.
    let start = (std::process::id().wrapping_mul(7_919)) % span;
    let _ = NEXT_OFFSET.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let offset = NEXT_OFFSET.fetch_add(1, Ordering::SeqCst) % span;
        let Ok(port) = u16::try_from(LOW_PORT + offset) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW_PORT}..{}", LOW_PORT + span);
}
