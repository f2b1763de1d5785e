//! Property-based fuzzing of the files an operator (or a PBX export) hands calbridge: the
//! directory (CSV and TOML) and `calbridge.toml`. Arbitrary bytes and mutated samples (the
//! documented example configuration, a PBX-shaped CSV) must give a listing, a configuration
//! or a typed error, never a panic; 10,000-deep TOML must be an error, not a stack overflow.

#[path = "../../net/tests/support/mutate.rs"]
mod mutate;

use std::path::Path;

use calbridge::config::Config;
use calbridge::directory::{read_file, DirectoryError};
use mutate::{apply_bytes, byte_edits, config};
use proptest::prelude::*;

const EXAMPLE_CONFIG: &str = include_str!("../../../examples/calbridge.toml");

/// A PBX export: byte-order mark, comment, quoted fields with commas and quotes, several
/// addresses in one field, a bad line and a duplicate.
const DIRECTORY_CSV: &str = "\u{feff}address,display_name,sip_uri\n# exported 2026-11-23\nBob@Example.com,\"Smith, Bob \"\"the builder\"\"\",sip:bob@pbx\nnot-an-address,X,\nann@example.com;a.l@example.com,Ann,\nbob@example.com,dup,\n";

const DIRECTORY_TOML: &str = "[[person]]\naddress = \"ann@example.com\"\nsip_uri = \"sip:ann@pbx\"\ndisplay_name = \"Ann\"\n\n[[person]]\naddress = \"bob@example.com;b@example.com\"\n";

/// Reads `bytes` as a CSV and as a TOML directory file.
fn read_directory(folder: &Path, bytes: &[u8]) {
    for name in ["people.csv", "people.toml"] {
        let path = folder.join(name);
        std::fs::write(&path, bytes).expect("write the directory file");
        match read_file(&path) {
            Ok(listing) => {
                for person in &listing.people {
                    assert!(person.address.as_str().contains('@'));
                }
            }
            // Not UTF-8: the read names the file.
            Err(DirectoryError::Read { path: shown, .. }) => assert!(shown.ends_with(name)),
            Err(DirectoryError::Invalid { path: shown, .. }) => assert!(shown.ends_with(name)),
        }
    }
}

fn parse_config(bytes: &[u8]) {
    let _ = Config::parse(&String::from_utf8_lossy(bytes));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_directory_or_config_readers(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let folder = tempfile::tempdir().expect("a temporary folder");
        read_directory(folder.path(), &bytes);
        parse_config(&bytes);
    }

    #[test]
    fn mutated_directory_files_give_a_listing_or_an_error(edits in byte_edits()) {
        let folder = tempfile::tempdir().expect("a temporary folder");
        read_directory(folder.path(), &apply_bytes(DIRECTORY_CSV.as_bytes(), &edits));
        read_directory(folder.path(), &apply_bytes(DIRECTORY_TOML.as_bytes(), &edits));
    }

    #[test]
    fn csv_soup_never_panics(
        parts in prop::collection::vec(
            prop_oneof![
                Just("address"), Just("sip_uri"), Just("display_name"), Just(","), Just("\""),
                Just("\"\""), Just("\n"), Just("\r\n"), Just("#"), Just(";"), Just("@"),
                Just("a@b.c"), Just("\u{feff}"), Just("é"), Just(" "), Just("\t"), Just("\0"),
            ],
            0..60,
        )
    ) {
        let folder = tempfile::tempdir().expect("a temporary folder");
        read_directory(folder.path(), parts.concat().as_bytes());
    }

    #[test]
    fn mutated_example_configurations_parse_or_fail_with_a_message(edits in byte_edits()) {
        parse_config(&apply_bytes(EXAMPLE_CONFIG.as_bytes(), &edits));
    }
}

#[test]
fn the_example_configuration_is_a_valid_sample() {
    Config::parse(EXAMPLE_CONFIG).expect("examples/calbridge.toml parses");
}

#[test]
fn ten_thousand_deep_toml_is_an_error_not_a_stack_overflow() {
    let depth = 10_000;
    let arrays = format!("x = {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let tables = format!("x = {}1{}\n", "{ a = ".repeat(depth), " }".repeat(depth));
    let dotted = format!("{} = 1\n", vec!["a"; depth].join("."));
    let headers = format!("[{}]\n", vec!["a"; depth].join("."));
    for text in [&arrays, &tables, &dotted, &headers] {
        assert!(Config::parse(text).is_err());
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("people.toml");
        std::fs::write(&path, text).expect("write the directory file");
        assert!(read_file(&path).is_err());
    }
}
