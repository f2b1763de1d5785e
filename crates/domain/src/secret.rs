use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A credential (client secret, password, API token, encryption key) held in memory.
///
/// It deliberately implements neither `Display` nor a revealing `Debug`, so that a secret
/// cannot end up in a log line, an error message or a panic by accident: reading it takes an
/// explicit call to [`Secret::expose`], which is easy to find in review.
///
/// In a configuration file a secret is written inline (`password = "…"`), or taken from an
/// environment variable (`password = { env = "NAME" }`) or a file (`password = { file =
/// "/run/credentials/calbridge.service/name" }`, as systemd's `LoadCredential=` and
/// Kubernetes' secret volumes provide it). The file is read when the configuration is read
/// (again at a reload), and its line ending is dropped. [`Secret::origin`] says where the value
/// came from, without showing it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    origin: SecretOrigin,
}

/// Where a secret's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Written in the configuration file, or made by the program.
    Inline,
    /// The environment variable of this name.
    Env(String),
    /// The file at this path.
    File(PathBuf),
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::Inline => f.write_str("inline in the configuration file"),
            SecretOrigin::Env(name) => write!(f, "environment variable {name}"),
            SecretOrigin::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// The largest secret file read: a password or key is a few hundred bytes; a bigger file is
/// the wrong one (and is not read into memory).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a secret given by reference could not be read. The messages name the variable or file,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the environment variable {0} is not set (or not valid text)")]
    EnvMissing(String),
    #[error("the environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("the secret file path `{0}` is relative: give an absolute path (e.g. /run/credentials/calbridge.service/…)")]
    FileRelative(String),
    #[error("cannot read the secret file {path}: {reason}")]
    FileRead { path: String, reason: String },
    #[error("the secret file {0} is larger than 64 KiB: is it the right file?")]
    FileTooLarge(String),
    #[error("the secret file {0} is empty")]
    FileEmpty(String),
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            origin: SecretOrigin::Inline,
        }
    }

    /// The value of the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Secret, SecretError> {
        let value = std::env::var(name).map_err(|_| SecretError::EnvMissing(name.to_string()))?;
        if value.is_empty() {
            return Err(SecretError::EnvEmpty(name.to_string()));
        }
        Ok(Secret {
            value,
            origin: SecretOrigin::Env(name.to_string()),
        })
    }

    /// The content of the file at `path` (absolute), without its trailing line ending.
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let shown = path.display().to_string();
        if !path.is_absolute() {
            return Err(SecretError::FileRelative(shown));
        }
        let failure = |error: std::io::Error| SecretError::FileRead {
            path: shown.clone(),
            reason: error.to_string(),
        };
        let file = std::fs::File::open(path).map_err(failure)?;
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(failure)?;
        if bytes.len() as u64 > MAX_SECRET_FILE {
            return Err(SecretError::FileTooLarge(shown));
        }
        let mut value = String::from_utf8(bytes).map_err(|_| SecretError::FileRead {
            path: shown.clone(),
            reason: "it is not UTF-8 text".to_string(),
        })?;
        let kept = value.trim_end_matches(['\n', '\r']).len();
        value.truncate(kept);
        if value.is_empty() {
            return Err(SecretError::FileEmpty(shown));
        }
        Ok(Secret {
            value,
            origin: SecretOrigin::File(path.to_path_buf()),
        })
    }

    /// The clear text, for the one place that must send it (a token request, an NTLM hash).
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// Where the value came from (for `check-config`; never the value itself).
    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

const SHAPE: &str = "a secret: a string, { env = \"VARIABLE\" } or { file = \"/absolute/path\" }";

struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SHAPE)
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        use serde::de::Error;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!(
                "expected {SHAPE}, found an empty table"
            )));
        };
        let secret = match key.as_str() {
            "env" => Secret::from_env(&map.next_value::<String>()?),
            "file" => Secret::from_file(&map.next_value::<PathBuf>()?),
            other => {
                return Err(A::Error::custom(format!(
                    "expected {SHAPE}, found the key `{other}`"
                )))
            }
        }
        .map_err(A::Error::custom)?;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::custom(format!(
                "expected {SHAPE}, found a second key `{extra}`"
            )));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Holder {
        password: Secret,
    }

    fn parse(text: &str) -> Result<Secret, String> {
        toml::from_str::<Holder>(text)
            .map(|holder| holder.password)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let secret = Secret::new("hunter2-very-secret");
        let printed = format!("{secret:?} {:?}", Some(&secret));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }

    #[test]
    fn a_secret_is_inline_or_from_a_variable_or_a_file() {
        let inline = parse("password = \"hunter2\"").expect("inline");
        assert_eq!(
            (inline.expose(), inline.origin()),
            ("hunter2", &SecretOrigin::Inline)
        );

        // PATH is set wherever tests run (changing the environment would race other tests).
        let path_variable = std::env::var("PATH").expect("PATH is set");
        let from_env = parse("password = { env = \"PATH\" }").expect("env");
        assert_eq!(from_env.expose(), path_variable);
        assert_eq!(from_env.origin().to_string(), "environment variable PATH");

        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("credential");
        std::fs::write(&path, "from-file\r\n").expect("write");
        let from_file =
            parse(&format!("password = {{ file = \"{}\" }}", path.display())).expect("file");
        assert_eq!(from_file.expose(), "from-file");
        assert_eq!(from_file.origin(), &SecretOrigin::File(path.clone()));
    }

    #[test]
    fn a_missing_variable_or_file_is_named_and_a_wrong_shape_explained() {
        let error = parse("password = { env = \"CALBRIDGE_SECRET_TEST_UNSET\" }").unwrap_err();
        assert!(
            error.contains("environment variable CALBRIDGE_SECRET_TEST_UNSET is not set"),
            "{error}"
        );
        let error =
            parse("password = { file = \"/nonexistent/calbridge/credential\" }").unwrap_err();
        assert!(
            error.contains("cannot read the secret file /nonexistent/calbridge/credential"),
            "{error}"
        );
        let error = parse("password = { file = \"relative/name\" }").unwrap_err();
        assert!(error.contains("is relative"), "{error}");
        let error = parse("password = { vault = \"x\" }").unwrap_err();
        assert!(error.contains("found the key `vault`"), "{error}");
        let error = parse("password = { env = \"A\", file = \"/b\" }").unwrap_err();
        assert!(
            error.contains("second key") || error.contains("not set"),
            "{error}"
        );
        let error = parse("password = 5").unwrap_err();
        assert!(
            error.contains("{ env = \\\"VARIABLE\\\" }") || error.contains("env ="),
            "{error}"
        );

        let dir = tempfile::tempdir().expect("a temp dir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let error = parse(&format!("password = {{ file = \"{}\" }}", empty.display())).unwrap_err();
        assert!(error.contains("is empty"), "{error}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 70_000]).expect("write");
        let error = parse(&format!("password = {{ file = \"{}\" }}", big.display())).unwrap_err();
        assert!(error.contains("larger than 64 KiB"), "{error}");
    }
}
