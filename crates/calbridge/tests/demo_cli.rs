//! Black-box tests of `calbridge demo` (the README's first command) through the real binary:
//! the bundled emulator, the first sync and the presence summary, on Graph and on EWS.

use std::process::Command;

/// The instant every demo run here starts at, a working morning: each run lays out the same
/// calendars around it and counts presence at it, so runs on different sources can be compared
/// exactly, whatever the hour the test runs at (no meeting starts or ends within two minutes
/// of it in the generated organisation, whose meetings begin on whole minutes).
const AT: &str = "2026-12-07T09:42:00Z";

/// Runs `calbridge demo --exit-after-sync --at AT` and returns the people counted per
/// activity in its "presence now:" line.
fn demo(source: &str, users: usize) -> Vec<(String, usize)> {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_calbridge"))
        .args(["demo", "--exit-after-sync", "--listen", "127.0.0.1:0"])
        .args(["--source", source, "--users", &users.to_string()])
        .args(["--at", AT])
        .arg("--data-dir")
        .arg(data_dir.path())
        .output()
        .expect("the calbridge binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo --source {source}: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("admin page: http://127.0.0.1:"),
        "the admin page is named: {stdout}"
    );
    let summary = stderr
        .lines()
        .find_map(|line| line.rsplit_once("presence now: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no presence summary: {stderr}"));
    summary
        .split(", ")
        .map(|part| {
            let (count, activity) = part
                .split_once(' ')
                .unwrap_or_else(|| panic!("'{part}' in {summary}"));
            (
                activity.to_string(),
                count.parse().unwrap_or_else(|_| panic!("'{part}'")),
            )
        })
        .collect()
}

fn total(counts: &[(String, usize)]) -> usize {
    counts.iter().map(|(_, count)| count).sum()
}

#[test]
fn the_demo_syncs_everyone_on_graph_on_ews_and_on_both() {
    let graph = demo("graph", 40);
    assert_eq!(total(&graph), 40, "{graph:?}");
    assert!(
        graph.iter().any(|(activity, _)| activity != "available"),
        "a working morning has meetings: {graph:?}"
    );
    let ews = demo("ews", 40);
    assert_eq!(ews, graph, "EWS and Graph see the same calendars");
    let both = demo("both", 40);
    assert_eq!(total(&both), 80, "{both:?}");
    for (activity, count) in &graph {
        let doubled = both
            .iter()
            .find(|(other, _)| other == activity)
            .map(|(_, count)| *count);
        assert_eq!(doubled, Some(2 * count), "{activity}: {both:?}");
    }
}

/// A service manager may stop calbridge while its first sync is still running (a large tenant
/// takes minutes): SIGTERM then stops it gracefully, as it does later, instead of killing it.
#[test]
fn sigterm_during_the_first_sync_stops_gracefully() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_calbridge"))
        .args(["demo", "--listen", "127.0.0.1:0", "--users", "5000"])
        .args(["--at", AT])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the calbridge binary runs");
    // Read on the side, so that a full pipe never holds the process up.
    let stderr = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let stdout = child.stdout.take().expect("stdout");
    // The service is up (its token printed) once the first sync has begun.
    let started = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("api-token:"));
    assert!(started, "the demo never started");
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = stderr.join().expect("stderr read");
    assert!(
        !stderr.contains("presence now:"),
        "the first sync ended before the signal, so this proves nothing: use more users"
    );
    assert!(
        status.success(),
        "SIGTERM during the first sync is a graceful stop, not a kill: {status}\n{stderr}"
    );
    assert!(stderr.contains("Stopping"), "{stderr}");
    assert!(
        !stderr.contains("did not stop"),
        "every task, the sync engine in its first sync included, stops when asked: {stderr}"
    );
}
