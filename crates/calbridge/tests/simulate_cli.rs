//! Black-box tests of `calbridge presence simulate` through the real binary.

use std::path::PathBuf;
use std::process::Command;

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn simulate(events: &std::path::Path, from: &str, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_calbridge"))
        .args(["presence", "simulate", "--events"])
        .arg(events)
        .arg("--config")
        .arg(repo_file("examples/calbridge.toml"))
        .args(["--from", from, "--to", to])
        .output()
        .expect("the calbridge binary runs")
}

#[test]
fn bundled_example_prints_the_state_then_every_change() {
    let output = simulate(
        &repo_file("examples/events.json"),
        "2026-11-23T06:00:00Z",
        "2026-11-25T12:00:00Z",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let notes: Vec<(&str, &str)> = lines
        .iter()
        .map(|line| {
            (
                line["at"].as_str().unwrap(),
                line["note"].as_str().unwrap().split(" #").next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        notes,
        vec![
            (
                "2026-11-23T06:00:00Z",
                "Free until 09:00 (Busy: Daily stand-up)"
            ),
            ("2026-11-23T08:00:00Z", "Daily stand-up until 09:15"),
            (
                "2026-11-23T08:15:00Z",
                "Free until 10:00 (Busy: Kundentermin Müller GmbH)"
            ),
            (
                "2026-11-23T09:00:00Z",
                "Kundentermin Müller GmbH until 11:00"
            ),
            ("2026-11-23T10:00:00Z", "Free until 11:30 (Away: Private)"),
            ("2026-11-23T10:30:00Z", "Private until 12:30"),
            ("2026-11-23T11:30:00Z", "Free until 13:00 (Homeoffice)"),
            (
                "2026-11-23T12:00:00Z",
                "Homeoffice until 15:00 (Busy: Code review 🚀)"
            ),
            ("2026-11-23T14:00:00Z", "Code review 🚀 until 16:00"),
            ("2026-11-23T15:00:00Z", "Homeoffice until 17:00"),
            (
                "2026-11-23T16:00:00Z",
                "Free until 24/11/2026 (Away: Vacation)"
            ),
            ("2026-11-23T23:00:00Z", "Vacation until 26/11/2026"),
        ]
    );
    // The vacation's priority keyword beats the board meeting on the 24th: no line for it.
    assert!(!stdout.contains("Board meeting"));
    // The private appointment's title never appears.
    assert!(!stdout.contains("Weiß"));
    assert_eq!(lines[1]["activity"], "busy");
    assert_eq!(lines[1]["until"], "2026-11-23T08:15:00Z");
    assert!(lines[1]["why"]
        .as_str()
        .unwrap()
        .contains("presence.mapping.busy"));
}

#[test]
fn bad_input_names_the_event_and_the_field() {
    let directory = std::env::temp_dir().join(format!("calbridge-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let cases = [
        (
            r#"[{"id":"e1","start":{"dateTime":"2026-11-23T09:00:00","timeZone":"Atlantis"},"end":{"dateTime":"2026-11-23T10:00:00"}}]"#,
            "event `e1`: field `start.timeZone`: unknown time zone `Atlantis`",
        ),
        (
            r#"[{"id":"e2","start":{"dateTime":"2026-11-23T09:00:00"},"end":{"dateTime":"2026-11-23T08:00:00"}}]"#,
            "event `e2`: field `end`",
        ),
        (r#"{"value": [ {"id": "#, "not a JSON array of events"),
    ];
    for (index, (json, expected)) in cases.iter().enumerate() {
        let path = directory.join(format!("case{index}.json"));
        std::fs::write(&path, json).unwrap();
        let output = simulate(&path, "2026-11-23T06:00:00Z", "2026-11-23T12:00:00Z");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(
            stderr.contains(&format!("case{index}.json")),
            "the file is named: {stderr}"
        );
    }
    let output = simulate(
        &repo_file("examples/events.json"),
        "yesterday",
        "2026-11-23T12:00:00Z",
    );
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("--from: `yesterday` is not an RFC 3339 instant"));
    let output = simulate(
        &repo_file("examples/events.json"),
        "2026-11-23T12:00:00Z",
        "2026-11-23T06:00:00Z",
    );
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("--to (2026-11-23T06:00:00Z) is before --from"));
    std::fs::remove_dir_all(&directory).ok();
}
