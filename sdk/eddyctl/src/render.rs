//! Human output: aligned tables, relative times and byte sizes, colour only on a terminal.
//! Owns presentation; never talks to the daemon.

use eddy_client::v1;
use std::io::IsTerminal;

/// Whether stdout takes colours (a terminal, and `NO_COLOR` unset).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A pipeline state, coloured by how well it is.
pub fn state(s: &str, colour: bool) -> String {
    if !colour {
        return s.to_string();
    }
    let code = match s {
        "running" => "32",
        "paused" | "starting" | "ended" => "33",
        _ => "31",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// eddyd's readiness for the status header: `ready`, or why not (pipelines still recovering,
/// pipelines held for failing to start, or else a pipeline that failed or stalled).
pub fn readiness<'a>(ready: bool, states: impl IntoIterator<Item = &'a str>) -> String {
    if ready {
        return "ready".into();
    }
    let (mut starting, mut held) = (0, 0);
    for s in states {
        starting += usize::from(s == "starting");
        held += usize::from(s == "start-failed");
    }
    match (starting, held) {
        (0, 0) => "not ready (a pipeline failed or stalled)".into(),
        (0, h) => format!("not ready ({h} pipeline(s) did not start)"),
        (s, _) => format!("starting ({s} pipeline(s) recovering)"),
    }
}

/// The running pipelines' sources whose connection is down, as (pipeline, source): readiness
/// does not count them (an outage of the broker is not one of eddyd), so status names them.
pub fn links_down(pipelines: &[v1::PipelineStatus]) -> Vec<(&str, &str)> {
    pipelines
        .iter()
        .filter(|p| p.state == "running")
        .flat_map(|p| {
            p.sources.iter().filter(|s| s.connected == Some(false)).map(move |s| (p.name.as_str(), s.name.as_str()))
        })
        .collect()
}

/// A pipeline's backups to the hub in one line: what the hub holds, what waits, what failed.
pub fn backup(b: &v1::BackupStatus) -> String {
    let mut t = match b.last_seq {
        0 => "none at the hub yet".to_string(),
        seq => format!("checkpoint {seq} at the hub ({} backed up this run)", b.checkpoints),
    };
    if b.waiting_ms > 0 {
        t.push_str(&format!("; the next has waited {}", duration_ms(b.waiting_ms)));
    }
    if !b.last_error.is_empty() {
        t.push_str(&format!("; retrying after {} failure(s), the last: {}", b.failures, b.last_error));
    }
    t
}

/// Characters a cell shows (colour escapes take no room).
fn width(s: &str) -> usize {
    let mut w = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => w += 1,
        }
    }
    w
}

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(width(c));
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - width(c) + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

/// "850 µs", "12.3 ms", "2.1 s".
pub fn duration_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

/// "4 s", "3 min", "2 h", "5 d".
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// "3 s ago"; "never" for `None`.
pub fn ago(ms: Option<u64>) -> String {
    ms.map_or_else(|| "never".into(), |m| format!("{} ago", duration_ms(m)))
}

/// `s`, or `-` when it is empty.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A count with thousands separated: 1 234 567.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// A Unix-ms time as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_ignore_colour_codes() {
        let t =
            table(&["NAME", "STATE"], &[vec!["a".into(), state("running", true)], vec!["longer".into(), "x".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME    STATE");
        assert!(lines[1].starts_with("a       \x1b[32mrunning"));
        assert_eq!(lines[2], "longer  x");
    }

    #[test]
    fn readiness_says_why_not() {
        assert_eq!(readiness(true, ["start-failed"]), "ready");
        assert_eq!(readiness(false, ["running", "starting"]), "starting (1 pipeline(s) recovering)");
        assert_eq!(readiness(false, ["start-failed", "running"]), "not ready (1 pipeline(s) did not start)");
        assert!(readiness(false, ["running"]).contains("failed or stalled"));
    }

    #[test]
    fn links_down_names_running_pipelines_sources_only() {
        let source = |name: &str, connected| v1::SourceStatus { name: name.into(), connected, ..Default::default() };
        let pipeline = |name: &str, state: &str, sources| v1::PipelineStatus {
            name: name.into(),
            state: state.into(),
            sources,
            ..Default::default()
        };
        let ps = [
            pipeline(
                "a",
                "running",
                vec![source("mqtt", Some(false)), source("kafka", Some(true)), source("file", None)],
            ),
            pipeline("b", "paused", vec![source("mqtt", Some(false))]),
        ];
        assert_eq!(links_down(&ps), [("a", "mqtt")]);
    }

    #[test]
    fn backup_says_what_the_hub_holds_and_what_fails() {
        let b = |last_seq, waiting_ms, last_error: &str| v1::BackupStatus {
            checkpoints: 4,
            last_seq,
            waiting_ms,
            failures: 2,
            last_error: last_error.into(),
        };
        assert_eq!(backup(&b(0, 0, "")), "none at the hub yet");
        assert_eq!(backup(&b(9, 0, "")), "checkpoint 9 at the hub (4 backed up this run)");
        assert_eq!(
            backup(&b(9, 12_000, "hub unreachable")),
            "checkpoint 9 at the hub (4 backed up this run); the next has waited 12 s; retrying after 2 failure(s), the last: hub unreachable"
        );
    }

    #[test]
    fn units() {
        assert_eq!(duration_ms(250), "250 ms");
        assert_eq!(duration_ms(3_400), "3 s");
        assert_eq!(duration_ms(600_000), "10 min");
        assert_eq!(ago(None), "never");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(count(1234567), "1\u{202f}234\u{202f}567");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_083_200_000), "2026-12-01 00:00:00");
    }
}
