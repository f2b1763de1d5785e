//! `calbridge bench --json`: one JSON object per row with every column, for Graph and EWS
//! (each row in a process of its own), run small as the binary. The figures themselves are not
//! judged (benchmarks, not timed tests); their meaning is: presence is right before the first
//! sync ends, CPU and memory are the process's own and present.

mod common;

use common::bench;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_one_json_object_with_every_column() {
    let (success, stdout, stderr) = bench(&[
        "--users",
        "40",
        "--source",
        "both",
        "--notifications",
        "3",
        "--latency-ms",
        "0",
        "--json",
    ])
    .await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert_eq!(
        rows.iter()
            .map(|row| row["source"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["graph", "ews"],
        "{stdout}"
    );
    for row in &rows {
        assert_eq!(row["users"], 40, "{row}");
        let figure = |name: &str| {
            row[name]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} is a number: {row}"))
        };
        for name in [
            "emulator_start_s",
            "presence_right_s",
            "first_sync_s",
            "requests_per_user",
            "notify_p50_ms",
            "notify_p99_ms",
            "cpu_ms_per_person",
            "rss_peak_mb",
            "rss_steady_mb",
        ] {
            assert!(figure(name) > 0.0, "{name}: {row}");
        }
        assert!(
            figure("presence_right_s") <= figure("first_sync_s"),
            "presence is right before the subscriptions are all made: {row}"
        );
        assert!(figure("notify_p50_ms") <= figure("notify_p99_ms"), "{row}");
        assert!(row["requests"].as_u64().is_some_and(|n| n > 0), "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_benchmark_times_the_list_and_one_presence() {
    let (success, stdout, stderr) = bench(&["--api", "--users", "20"]).await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for row in [
        "GET /api/v1/users (",
        "GET /api/v1/users/{address}/presence",
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(row))
            .unwrap_or_else(|| panic!("no row '{row}' in:\n{stdout}"));
        let per_second: f64 = line
            .split_whitespace()
            .rev()
            .nth(3)
            .and_then(|figure| figure.parse().ok())
            .unwrap_or_else(|| panic!("requests/s in: {line}"));
        assert!(per_second > 0.0, "{line}");
    }
}
