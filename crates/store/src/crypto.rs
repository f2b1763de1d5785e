//! Encryption of secrets at rest.
//!
//! Secrets (client secrets, webhook `clientState`s) are sealed with XChaCha20-Poly1305 under
//! one 32-byte key that lives outside the database, so a copied database file alone reveals
//! nothing. XChaCha's 24-byte nonce is used rather than ChaCha's 12 bytes because nonces are
//! random per write: with 192 bits a collision is out of reach however often secrets are
//! rewritten. The value's name is the associated data, so a sealed value moved to another row
//! (or another person's `clientState`) fails to open instead of being accepted.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::StoreError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// The first byte of every sealed value, so that a later change of algorithm can tell old
/// values from new ones.
const FORMAT_V1: u8 = 1;

const EXPECTED_FORMAT: &str = "expected 32 random bytes written as 64 hex digits or as base64 \
     (44 characters); `openssl rand -base64 32` makes one";

/// The key that seals secrets in the store.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Reads a key written as hex or base64 (surrounding white space ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let key_error = |reason: String| StoreError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        refuse_shared_key_file(path)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
            key_error(format!(
                "{error}; create one with SecretKey::generate_to_file or `openssl rand -base64 32`"
            ))
        })?);
        parse_key(&text).map_err(key_error)
    }

    /// Reads a key written as hex or base64 from an environment variable.
    pub fn from_env(variable: &str) -> Result<Self, StoreError> {
        let key_error = |reason: String| StoreError::KeyVariable {
            variable: variable.to_string(),
            reason,
        };
        let text = Zeroizing::new(std::env::var(variable).map_err(|error| match error {
            std::env::VarError::NotPresent => {
                key_error(format!("it is not set; {EXPECTED_FORMAT}"))
            }
            std::env::VarError::NotUnicode(_) => {
                key_error(format!("it is not valid text; {EXPECTED_FORMAT}"))
            }
        })?);
        parse_key(&text).map_err(key_error)
    }

    /// Writes a new random key to `path` (readable by the owner only) and returns it.
    ///
    /// An existing file is never overwritten: replacing a key makes every secret sealed with
    /// the old one unreadable, which is worse than failing the first start.
    pub fn generate_to_file(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let key = SecretKey::generate();
        key.write_new_file(path)?;
        Ok(key)
    }

    /// Writes this key to a new file at `path`, readable by the owner only; an existing file
    /// is never overwritten. For a key made in memory first and kept only once the store it
    /// opened turned out to hold nothing sealed with another one.
    pub fn write_new_file(&self, path: impl AsRef<Path>) -> Result<(), StoreError> {
        let path = path.as_ref();
        let key_error = |reason: String| StoreError::KeyGenerate {
            path: path.to_path_buf(),
            reason,
        };
        let key = self;
        let text = Zeroizing::new(format!("{}\n", base64_engine().encode(*key.0)));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        // Written whole under a name of this process's own, then linked to `path`, which fails
        // if `path` exists: another process starting at the same moment never reads a key
        // file that is there but not yet written.
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".new-{}", std::process::id()));
        let partial = std::path::PathBuf::from(partial);
        let written = options.open(&partial).and_then(|mut file| {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
        });
        let linked = written.and_then(|()| std::fs::hard_link(&partial, path));
        let _ = std::fs::remove_file(&partial);
        linked.map_err(|error| key_error(error.to_string()))
    }

    /// A new random key, kept only in memory (tests, or a caller that stores it elsewhere).
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&key);
        SecretKey(bytes)
    }

    pub(crate) fn seal(&self, name: &str, aad: &str, clear: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: clear,
            aad: aad.as_bytes(),
        };
        let ciphertext =
            cipher
                .encrypt(&nonce, payload)
                .map_err(|_| StoreError::SecretUnencryptable {
                    name: name.to_string(),
                    reason: "the cipher refused the value (too long?)".to_string(),
                })?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    pub(crate) fn open(
        &self,
        name: &str,
        aad: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let undecryptable = || StoreError::SecretUndecryptable {
            name: name.to_string(),
        };
        let (format, rest) = sealed.split_first().ok_or_else(undecryptable)?;
        if *format != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        let payload = Payload {
            msg: ciphertext,
            aad: aad.as_bytes(),
        };
        cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map(Zeroizing::new)
            .map_err(|_| undecryptable())
    }
}

/// A key file that other users can read (or write) is refused: whoever reads it opens every
/// sealed secret of a copied database. Checked on read, not only when the file is made,
/// because keys are restored from backups and copied between machines with looser modes.
fn refuse_shared_key_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A missing or unreadable file is reported by the read that follows, with its cause.
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(StoreError::KeyPermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn base64_engine() -> GeneralPurpose {
    // Padding is optional on input because people paste keys from tools that strip it.
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

fn url_safe_base64_engine() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Parses hex or base64. Errors describe the shape of the input, never its content.
fn parse_key(text: &str) -> Result<SecretKey, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("it is empty; {EXPECTED_FORMAT}"));
    }
    let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Zeroizing::new(decode_hex(text))
    } else {
        let decoded = base64_engine()
            .decode(text)
            .or_else(|_| url_safe_base64_engine().decode(text))
            .map_err(|_| {
                format!(
                    "its {} characters are neither hex nor base64; {EXPECTED_FORMAT}",
                    text.chars().count()
                )
            })?;
        Zeroizing::new(decoded)
    };
    if bytes.len() != KEY_LEN {
        return Err(format!(
            "it decodes to {} bytes instead of 32; {EXPECTED_FORMAT}",
            bytes.len()
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    Ok(SecretKey(key))
}

/// The caller has checked that `text` is an even number of ASCII hex digits.
fn decode_hex(text: &str) -> Vec<u8> {
    fn nibble(digit: u8) -> u8 {
        match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => digit - b'A' + 10,
        }
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn hex_and_base64_spellings_of_one_key_are_the_same_key() {
        let from_hex = parse_key(HEX_KEY).unwrap();
        let base64 = base64_engine().encode(decode_hex(HEX_KEY));
        let from_base64 = parse_key(&format!("  {base64}\n")).unwrap();
        let unpadded = parse_key(base64.trim_end_matches('=')).unwrap();
        assert_eq!(*from_hex.0, *from_base64.0);
        assert_eq!(*from_hex.0, *unpadded.0);
        assert_eq!(from_hex.0[31], 0x1f);
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused_without_echoing_it() {
        let error = parse_key("c2hvcnQta2V5").unwrap_err();
        assert!(error.contains("9 bytes instead of 32"), "{error}");
        assert!(!error.contains("c2hvcnQta2V5"), "{error}");
        let error = parse_key("not a key at all!").unwrap_err();
        assert!(error.contains("neither hex nor base64"), "{error}");
        assert!(!error.contains("not a key"), "{error}");
    }

    #[test]
    fn debug_output_of_a_key_is_redacted() {
        let key = parse_key(HEX_KEY).unwrap();
        assert_eq!(format!("{key:?}"), "SecretKey(<redacted>)");
    }

    #[test]
    fn a_value_sealed_under_one_name_does_not_open_under_another() {
        let key = SecretKey::generate();
        let sealed = key.seal("a", "secret:a", b"hunter2").unwrap();
        assert_eq!(&*key.open("a", "secret:a", &sealed).unwrap(), b"hunter2");
        let error = key.open("b", "secret:b", &sealed).unwrap_err();
        assert_eq!(
            error.to_string(),
            "secret b cannot be decrypted with this key: the store's key changed since the \
             secret was written; use the old key file or variable, or run `calbridge run \
             --rebuild-store`, which keeps the secrets this key opens and makes the others anew"
        );
    }

    #[test]
    fn two_seals_of_the_same_value_differ_because_nonces_are_random() {
        let key = SecretKey::generate();
        let first = key.seal("a", "secret:a", b"same").unwrap();
        let second = key.seal("a", "secret:a", b"same").unwrap();
        assert_ne!(first, second);
    }
}
