//! Runs the Python client proofs (`clients/`, pytest) against the emulator binary.
//!
//! `CALBRIDGE_PYTHON` names a Python with `clients/requirements.txt` installed. Without it the
//! test says it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1`, when a missing Python fails.

use std::process::Command;

#[test]
fn python_client_libraries_work_against_the_emulator() {
    let python = match std::env::var("CALBRIDGE_PYTHON") {
        Ok(python) if !python.is_empty() => python,
        _ => {
            let required =
                std::env::var("CALBRIDGE_REQUIRE_SERVICES").is_ok_and(|value| value == "1");
            assert!(!required, "CALBRIDGE_REQUIRE_SERVICES=1 but CALBRIDGE_PYTHON is not set: point it at a python with crates/m365-emulator/clients/requirements.txt installed");
            println!("skipped: CALBRIDGE_PYTHON is not set, so the Python client proofs (msal, python-o365, requests, exchangelib, msgraph-sdk, recurring_ical_events) did not run");
            return;
        }
    };
    let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/clients");
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", clients])
        .env("M365_EMULATOR_BIN", env!("CARGO_BIN_EXE_m365-emulator"))
        .current_dir(clients)
        .status();
    match status {
        Ok(status) => assert!(
            status.success(),
            "pytest failed ({status}); its output is above"
        ),
        Err(error) => panic!("could not run {python}: {error}"),
    }
}
