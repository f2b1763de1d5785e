//! `calbridge bench --rooms`: run small (20 rooms) as the binary, its answer to "a free room for
//! 8 people for the next 30 minutes in building 2" checked by the benchmark itself against the
//! rooms' calendars at Graph, and its three rows of figures; and the sizes it refuses. The
//! figures themselves are not judged here (benchmarks, not timed tests).

mod common;

use common::bench;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_benchmark_checks_its_answer_and_times_three_requests() {
    let (success, stdout, stderr) = bench(&["--rooms", "20"]).await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("the same as the calendars at Graph say"),
        "{stdout}"
    );
    for row in [
        "free for 30 min, >= 8 seats, building 2",
        "every room with its state ",
        "every room with its state and today's agenda",
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(row))
            .unwrap_or_else(|| panic!("no row '{row}' in:\n{stdout}"));
        let figures: Vec<f64> = line[row.len()..]
            .split_whitespace()
            .map(|figure| figure.parse().unwrap_or(f64::NAN))
            .collect();
        assert_eq!(figures.len(), 4, "{line}");
        assert!(
            figures.iter().all(|ms| ms.is_finite() && *ms > 0.0),
            "{line}"
        );
        assert!(
            figures.windows(2).all(|pair| pair[0] <= pair[1]),
            "p50 <= p95 <= p99 <= max: {line}"
        );
    }
}

#[tokio::test]
async fn the_rooms_benchmark_refuses_sizes_it_cannot_build() {
    for rooms in ["0", "5001"] {
        let (success, _, stderr) = bench(&["--rooms", rooms]).await;
        assert!(!success);
        assert!(stderr.contains("--rooms takes 1 to 5000 rooms"), "{stderr}");
    }
}
