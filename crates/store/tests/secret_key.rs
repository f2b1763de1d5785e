//! Loading and creating the key that seals the store's secrets.

use calbridge_domain::Secret;
use calbridge_store::{SecretKey, SqliteStore, Store, StoreError};

#[tokio::test]
async fn a_generated_key_file_reloads_as_the_same_key() {
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("store.key");
    let database = directory.path().join("calbridge.sqlite");

    let generated = SecretKey::generate_to_file(&key_path).unwrap();
    let store = SqliteStore::open(&database, generated).await.unwrap();
    store
        .put_secret("api-token", &Secret::new("token-value"))
        .await
        .unwrap();
    store.close().await;

    let reloaded = SecretKey::from_file(&key_path).unwrap();
    let store = SqliteStore::open(&database, reloaded).await.unwrap();
    assert_eq!(
        store
            .get_secret("api-token")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "token-value"
    );
}

#[cfg(unix)]
#[test]
fn a_generated_key_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("store.key");
    SecretKey::generate_to_file(&key_path).unwrap();
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn generating_a_key_never_overwrites_an_existing_one() {
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("store.key");
    std::fs::write(&key_path, "existing key\n").unwrap();

    let error = SecretKey::generate_to_file(&key_path).unwrap_err();
    assert!(matches!(error, StoreError::KeyGenerate { .. }));
    assert!(
        error.to_string().starts_with(&format!(
            "cannot write a new store key to {}",
            key_path.display()
        )),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        "existing key\n"
    );
}

#[test]
fn a_missing_key_file_is_named_in_the_error() {
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("absent.key");
    let error = SecretKey::from_file(&key_path).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot read the store key from file {}",
            key_path.display()
        )),
        "{message}"
    );
}

#[test]
fn a_key_file_with_the_wrong_content_explains_the_expected_format_without_echoing_it() {
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("store.key");
    std::fs::write(&key_path, "correct horse battery staple").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let message = SecretKey::from_file(&key_path).unwrap_err().to_string();
    assert!(message.contains("64 hex digits or as base64"), "{message}");
    assert!(!message.contains("horse"), "{message}");
}

#[test]
fn a_key_comes_from_an_environment_variable_in_hex_or_base64() {
    // Each test uses its own variable name: tests run in parallel in one process.
    let hex = "ff".repeat(32);
    std::env::set_var("CALBRIDGE_STORE_TEST_KEY_HEX", &hex);
    assert!(SecretKey::from_env("CALBRIDGE_STORE_TEST_KEY_HEX").is_ok());

    std::env::set_var(
        "CALBRIDGE_STORE_TEST_KEY_BASE64",
        "//////////////////////////////////////////8=",
    );
    assert!(SecretKey::from_env("CALBRIDGE_STORE_TEST_KEY_BASE64").is_ok());

    let error = SecretKey::from_env("CALBRIDGE_STORE_TEST_KEY_UNSET").unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot read the store key from environment variable CALBRIDGE_STORE_TEST_KEY_UNSET: \
         it is not set; expected 32 random bytes written as 64 hex digits or as base64 \
         (44 characters); `openssl rand -base64 32` makes one"
    );
}

#[tokio::test]
async fn the_same_key_in_hex_and_base64_opens_the_same_secrets() {
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("calbridge.sqlite");
    std::env::set_var("CALBRIDGE_STORE_TEST_SAME_HEX", "ff".repeat(32));
    std::env::set_var(
        "CALBRIDGE_STORE_TEST_SAME_BASE64",
        "//////////////////////////////////////////8",
    );
    let from_hex = SecretKey::from_env("CALBRIDGE_STORE_TEST_SAME_HEX").unwrap();
    let from_base64 = SecretKey::from_env("CALBRIDGE_STORE_TEST_SAME_BASE64").unwrap();

    let store = SqliteStore::open(&database, from_hex).await.unwrap();
    store
        .put_secret("name", &Secret::new("value"))
        .await
        .unwrap();
    store.close().await;
    let store = SqliteStore::open(&database, from_base64).await.unwrap();
    assert_eq!(
        store.get_secret("name").await.unwrap().unwrap().expose(),
        "value"
    );
}

#[cfg(unix)]
#[test]
fn a_key_file_other_users_can_read_is_refused_with_the_chmod_that_fixes_it() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("store.key");
    SecretKey::generate_to_file(&key_path).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
        let error = SecretKey::from_file(&key_path).unwrap_err();
        assert!(
            matches!(error, StoreError::KeyPermissions { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("run `chmod 600 {}`", key_path.display())),
            "{message}"
        );
        assert!(message.contains(&format!("mode {mode:o}")), "{message}");
    }
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(SecretKey::from_file(&key_path).is_ok());
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(SecretKey::from_file(&key_path).is_ok());
}
