//! On-demand queries over materialized views' current rows: what each kind of view keeps (by
//! key, the newest window, the newest rows), the dialect over it (filters, aggregates, ORDER BY,
//! LIMIT), the bounds, and that kept rows survive a restart through the checkpoint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eddy_engine::connector::JsonRowWriter;
use eddy_engine::query::parse_query;
use eddy_engine::query::{self, Answer, QueryLimits, ViewInput};
use eddy_engine::storage::Cipher;
use eddy_engine::storage::RealFs;
use eddy_engine::Limits;
use eddy_engine::{DurableConfig, Mode, Pipeline, PipelineConfig};

const SQL: &str = "
CREATE SOURCE readings (device STRING NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'file', path = 'readings.jsonl', batch_rows = '7');
CREATE MATERIALIZED VIEW per_device AS
  SELECT device, COUNT(*) AS n, MAX(temp) AS hottest FROM readings GROUP BY device;
CREATE MATERIALIZED VIEW per_minute AS
  SELECT device, window_end, AVG(temp) AS avg_temp
  FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
  GROUP BY device, window_start, window_end;
CREATE MATERIALIZED VIEW hot AS SELECT device, temp, ts FROM readings WHERE temp > 29;
CREATE SINK s AS SELECT * FROM per_minute WITH (connector = 'file', path = 'out/s.jsonl');
";

/// 3 devices, one reading every 10 s for 5 minutes; temp rises by device and time.
fn write_input(dir: &Path) {
    let mut lines = String::new();
    for i in 0..30i64 {
        for (d, dev) in ["a", "b", "c"].iter().enumerate() {
            let temp = 20.0 + d as f64 * 5.0 + i as f64 * 0.25;
            let ts = chrono::DateTime::from_timestamp_millis(1_700_000_040_000 + i * 10_000).unwrap();
            lines += &format!(
                "{{\"device\":\"{dev}\",\"temp\":{temp},\"ts\":\"{}\"}}\n",
                ts.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            );
        }
    }
    std::fs::write(dir.join("readings.jsonl"), lines).unwrap();
}

fn config(dir: &Path, mode: Mode, view_bytes: usize) -> PipelineConfig {
    let mut cfg = PipelineConfig::new(dir, mode);
    cfg.view_bytes = view_bytes;
    cfg.idle_sleep = Duration::from_millis(1);
    cfg
}

fn limits() -> QueryLimits {
    QueryLimits { max_rows: 1000, max_bytes: 1 << 20, operators: Limits::default() }
}

fn ask(p: &Pipeline, sql: &str, limits: QueryLimits) -> Result<Answer, String> {
    let q = parse_query(sql).map_err(|e| e.to_string())?;
    let read = query::relations(&q);
    let views = p
        .views()
        .iter()
        .filter(|v| read.iter().any(|r| r == v.name()))
        .map(|v| v.rows().map(|rows| ViewInput { name: v.name().to_string(), rows }))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    query::run(&q, views, limits).map_err(|e| e.to_string())
}

/// The answer as JSON lines, in its order.
fn lines(a: &Answer) -> Vec<String> {
    let names: Vec<String> = a.batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    let w = JsonRowWriter::new(&names);
    let rows = w.batch(&a.batch);
    (0..a.batch.num_rows())
        .map(|i| {
            let mut out = Vec::new();
            rows.write_row(i, b"", &mut out);
            String::from_utf8(out).unwrap()
        })
        .collect()
}

fn replayed(dir: &Path, view_bytes: usize) -> Pipeline {
    replayed_on(dir, view_bytes, 1)
}

fn replayed_on(dir: &Path, view_bytes: usize, shards: usize) -> Pipeline {
    write_input(dir);
    let mut cfg = config(dir, Mode::Replay, view_bytes);
    cfg.shards = shards;
    let mut p = Pipeline::plan(SQL, &cfg).unwrap();
    assert_eq!(p.summary().shards, shards, "{:?}", p.summary().unsharded_because);
    p.run_to_end().unwrap();
    p
}

#[test]
fn a_sharded_pipeline_answers_as_an_unsharded_one() {
    let dir = tempfile::tempdir().unwrap();
    let queries = [
        "SELECT device, n, hottest FROM per_device ORDER BY device",
        "SELECT device, window_end, avg_temp FROM per_minute ORDER BY device",
        "SELECT COUNT(*) AS rows, MIN(temp) AS coolest FROM hot",
    ];
    let one = replayed_on(dir.path(), 1 << 20, 1);
    let three = replayed_on(dir.path(), 1 << 20, 3);
    for q in queries {
        assert_eq!(lines(&ask(&one, q, limits()).unwrap()), lines(&ask(&three, q, limits()).unwrap()), "{q}");
    }
}

#[test]
fn each_kind_of_view_answers_with_its_current_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = replayed(dir.path(), 1 << 20);
    // Keyed: one row per device, the latest values.
    let a = ask(&p, "SELECT device, n, hottest FROM per_device ORDER BY device", limits()).unwrap();
    assert_eq!(
        lines(&a),
        [
            r#"{"device":"a","n":30,"hottest":27.25}"#,
            r#"{"device":"b","n":30,"hottest":32.25}"#,
            r#"{"device":"c","n":30,"hottest":37.25}"#,
        ]
    );
    assert!(!a.truncated);
    // Windowed: the newest finished window only (readings at :40..:30 of the 5th minute).
    let a = ask(&p, "SELECT device, window_end, avg_temp FROM per_minute ORDER BY 1", limits()).unwrap();
    assert_eq!(
        lines(&a),
        [
            r#"{"device":"a","window_end":"2023-11-14T22:19:00.000Z","avg_temp":26.625}"#,
            r#"{"device":"b","window_end":"2023-11-14T22:19:00.000Z","avg_temp":31.625}"#,
            r#"{"device":"c","window_end":"2023-11-14T22:19:00.000Z","avg_temp":36.625}"#,
        ]
    );
    // Append-only: the newest rows the bound holds (here all of them).
    let a = ask(&p, "SELECT COUNT(*) AS rows, MIN(temp) AS coolest FROM hot", limits()).unwrap();
    assert_eq!(lines(&a), [r#"{"rows":43,"coolest":29.25}"#]);
}

#[test]
fn filters_aggregates_order_and_limit_follow_the_dialect() {
    let dir = tempfile::tempdir().unwrap();
    let p = replayed(dir.path(), 1 << 20);
    let a =
        ask(&p, "SELECT device, hottest - 20 AS over FROM per_device WHERE hottest > 30 ORDER BY over DESC;", limits())
            .unwrap();
    assert_eq!(lines(&a), [r#"{"device":"c","over":17.25}"#, r#"{"device":"b","over":12.25}"#]);
    let a = ask(&p, "SELECT COUNT(*) AS devices, SUM(n) AS readings FROM per_device", limits()).unwrap();
    assert_eq!(lines(&a), [r#"{"devices":3,"readings":90}"#]);
    let a = ask(&p, "SELECT device, temp FROM hot ORDER BY temp DESC, device LIMIT 2 OFFSET 1", limits()).unwrap();
    assert_eq!(lines(&a), [r#"{"device":"c","temp":37}"#, r#"{"device":"c","temp":36.75}"#]);
    // A subquery.
    let a =
        ask(&p, "SELECT MAX(n) AS most FROM (SELECT device, n FROM per_device WHERE device <> 'c')", limits()).unwrap();
    assert_eq!(lines(&a), [r#"{"most":30}"#]);
    // The row bound cuts and says so.
    let a = ask(&p, "SELECT * FROM hot", QueryLimits { max_rows: 5, ..limits() }).unwrap();
    assert_eq!((a.batch.num_rows(), a.truncated), (5, true));
}

#[test]
fn bad_queries_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = replayed(dir.path(), 1 << 20);
    let e = ask(&p, "SELECT * FROM readings", limits()).unwrap_err();
    assert!(e.contains("readings"), "{e}");
    let e = ask(&p, "SELECT device FROM per_device ORDER BY n", limits()).unwrap_err();
    assert!(e.contains("order by a selected column") && e.contains("columns: device"), "{e}");
    let e = ask(&p, "SELECT * FROM per_device; SELECT 1", limits()).unwrap_err();
    assert!(e.contains("one query at a time"), "{e}");
    let e = ask(&p, "SELECT * FROM per_device EMIT AFTER WATERMARK", limits()).unwrap_err();
    assert!(e.contains("EMIT"), "{e}");
    let e = ask(&p, "SELECT * FROM per_device d JOIN per_minute m ON d.device = m.device", limits()).unwrap_err();
    assert!(e.contains("joins of views are not supported"), "{e}");
    let e = ask(&p, "SELECT * FROM hot LIMIT 'x'", limits()).unwrap_err();
    assert!(e.contains("LIMIT takes a whole number"), "{e}");
    let e = ask(&p, "SELECT * FROM hot", QueryLimits { max_bytes: 100, ..limits() }).unwrap_err();
    assert!(e.contains("more than 100 bytes"), "{e}");
}

#[test]
fn views_over_their_bound_say_so_and_append_only_views_keep_the_newest_rows() {
    let dir = tempfile::tempdir().unwrap();
    // Room for a few hundred bytes: the keyed view cannot hold its rows; the windowed one
    // neither; the append-only one keeps its newest batch.
    let p = replayed(dir.path(), 250);
    let e = ask(&p, "SELECT * FROM per_device", limits()).unwrap_err();
    assert!(e.contains("view 'per_device' holds more than 250 bytes"), "{e}");
    let a = ask(&p, "SELECT MAX(temp) AS newest_max FROM hot", limits()).unwrap();
    assert_eq!(lines(&a), [r#"{"newest_max":37.25}"#]);
    // Nothing kept when the pipeline keeps no views.
    let p = replayed(dir.path(), 0);
    assert!(p.views().is_empty());
}

#[test]
fn kept_rows_survive_a_restart_through_the_checkpoint_sharded_too() {
    for shards in [1, 2] {
        restart_keeps_view_rows(shards);
    }
}

fn restart_keeps_view_rows(shards: usize) {
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path());
    let open = || {
        let mut cfg = config(dir.path(), Mode::Live, 1 << 20);
        cfg.shards = shards;
        let mut p = Pipeline::plan(SQL, &cfg).unwrap();
        let d = DurableConfig::new(dir.path().join("state"), Arc::new(RealFs::new()), Arc::new(Cipher::plaintext()));
        p.open_durable(SQL, d).unwrap();
        p
    };
    let mut p = open();
    for _ in 0..1000 {
        if p.all_ended() {
            break;
        }
        p.step().unwrap();
        p.tick().unwrap();
    }
    p.checkpoint().unwrap();
    let before = lines(&ask(&p, "SELECT device, n FROM per_device ORDER BY device", limits()).unwrap());
    assert_eq!(before.len(), 3);
    drop(p);
    let p = open();
    let after = lines(&ask(&p, "SELECT device, n FROM per_device ORDER BY device", limits()).unwrap());
    assert_eq!(before, after);
}

/// A pipeline that cannot be split runs on one thread though shards were asked for: its views
/// keep their rows there (they were once attached to the unused shard graphs, and stayed empty).
#[test]
fn views_of_a_pipeline_that_cannot_be_sharded_keep_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path());
    let sql = format!(
        "{SQL}
        CREATE MATERIALIZED VIEW totals AS SELECT COUNT(*) AS n, MAX(temp) AS hottest FROM readings;
        CREATE MATERIALIZED VIEW freezing AS SELECT device, temp FROM readings WHERE temp < -40;"
    );
    let mut cfg = config(dir.path(), Mode::Replay, 1 << 20);
    cfg.shards = 3;
    let mut p = Pipeline::plan(&sql, &cfg).unwrap();
    assert_eq!(p.summary().shards, 1);
    let why = p.summary().unsharded_because.clone().unwrap_or_default();
    assert!(why.contains("GROUP BY of materialized view 'totals' has no key"), "{why}");
    p.run_to_end().unwrap();
    let one = replayed(dir.path(), 1 << 20);
    let q = "SELECT device, n, hottest FROM per_device ORDER BY device";
    assert_eq!(lines(&ask(&p, q, limits()).unwrap()), lines(&ask(&one, q, limits()).unwrap()));
    assert_eq!(lines(&ask(&p, "SELECT n, hottest FROM totals", limits()).unwrap()), [r#"{"n":90,"hottest":37.25}"#]);
    // An aggregate over a view with no rows is one row, as over any empty table.
    let a = ask(&p, "SELECT COUNT(*) AS c, MAX(temp) AS t FROM freezing", limits()).unwrap();
    assert_eq!(lines(&a), [r#"{"c":0,"t":null}"#]);
}
