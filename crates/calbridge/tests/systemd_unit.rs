//! The systemd unit and the configuration the README shows: `systemd-analyze verify` accepts the
//! unit without a warning (where systemd is installed), and calbridge's own reader accepts the
//! configuration with its secrets taken from the credential files, with nothing to warn about.

use std::path::Path;

/// The text of the README's first fenced block of `language` after the `heading` line.
fn readme_block(heading: &str, language: &str, nth: usize) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("the README");
    let after = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("the README has no `{heading}`"))
        .1;
    let fence = format!("```{language}\n");
    let mut rest = after;
    for _ in 0..nth {
        rest = rest.split_once(&fence).expect("a further block").1;
    }
    let start = rest
        .split_once(&fence)
        .unwrap_or_else(|| panic!("no ```{language} block after `{heading}`"))
        .1;
    start
        .split_once("```")
        .expect("the block's end")
        .0
        .to_string()
}

#[test]
fn the_readmes_systemd_unit_passes_systemd_analyze_verify() {
    let unit = readme_block("### Running under systemd", "ini", 0);
    assert!(
        unit.contains("ExecStart=/usr/local/bin/calbridge run"),
        "{unit}"
    );
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "CALBRIDGE_REQUIRE_SERVICES=1 but systemd-analyze is missing (apt-get install systemd)"
        );
        eprintln!("skipped: systemd-analyze is missing");
        return;
    };
    assert!(version.status.success());
    // The unit names the installed binary; here it is the one cargo built.
    let unit = unit.replace("/usr/local/bin/calbridge", env!("CARGO_BIN_EXE_calbridge"));
    let (ok, said) = verify(&unit);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The same check finds a mistake: the test would fail on a unit that systemd ignores a
    // line of.
    let (_, said) = verify(&unit.replace("ProtectSystem=strict", "ProtectSystem=strikt"));
    assert!(
        said.contains("strikt"),
        "a wrong value was not reported: {said}"
    );
}

/// `systemd-analyze verify` of `unit` written as `calbridge.service`: whether it succeeded, and
/// what it said.
fn verify(unit: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("calbridge.service");
    std::fs::write(&path, unit).expect("write the unit");
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn the_readmes_systemd_configuration_reads_its_secrets_from_the_credentials() {
    let text = readme_block("### Running under systemd", "toml", 0);
    let dir = tempfile::tempdir().expect("a temp dir");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("a credentials folder");
    std::fs::write(
        credentials.join("api-token"),
        "a-token-of-at-least-16-characters\n",
    )
    .expect("write");
    std::fs::write(
        credentials.join("graph-client-secret"),
        "Graph~Secret.Value\n",
    )
    .expect("write");
    let text = text.replace(
        "/run/credentials/calbridge.service",
        &credentials.display().to_string(),
    );
    let config = calbridge::config::Config::parse(&text).expect("the README's configuration");
    let origins: Vec<(String, String)> = config
        .secrets()
        .into_iter()
        .map(|(setting, secret)| (setting, secret.origin().to_string()))
        .collect();
    assert_eq!(
        origins,
        vec![
            (
                "api.token".to_string(),
                format!("file {}", credentials.join("api-token").display())
            ),
            (
                "sources[m365].graph.credential.client_secret".to_string(),
                format!("file {}", credentials.join("graph-client-secret").display())
            ),
        ]
    );
    assert_eq!(
        config.api.token.as_ref().map(|token| token.expose()),
        Some("a-token-of-at-least-16-characters")
    );
    // World-readable, as a DynamicUser service needs it, and nothing to warn about.
    let file = dir.path().join("calbridge.toml");
    std::fs::write(&file, &text).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(config.inline_secrets_warning(&file), None);
}
