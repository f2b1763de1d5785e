//! Identifiers: deterministic ones for generated and scenario data, random ones at run time.

use base64::Engine;
use ring::rand::SecureRandom;

/// A small deterministic pseudo-random generator (SplitMix64).
///
/// Written out here rather than taken from a crate so that a seed produces the same
/// organisation in every version of the emulator, which a benchmark history relies on.
#[derive(Clone, Debug)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    pub fn new(seed: u64) -> SeededRandom {
        SeededRandom {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..upper` (`upper` must be > 0; 0 yields 0).
    pub fn below(&mut self, upper: u64) -> u64 {
        if upper == 0 {
            return 0;
        }
        self.next_u64() % upper
    }

    /// True with the given probability (0.0..=1.0).
    pub fn chance(&mut self, probability: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }

    pub fn guid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format_guid(a, b)
    }

    /// An Outlook-looking item id (base64url alphabet without `-`/`_`, so ids can be joined with `_`).
    pub fn item_id(&mut self) -> String {
        let mut bytes = [0u8; 30];
        for chunk in bytes.chunks_mut(8) {
            let value = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
        outlook_id_from_bytes(&bytes)
    }
}

fn format_guid(a: u64, b: u64) -> String {
    // Version-4 style bits so the ids look like what Entra hands out.
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

fn outlook_id_from_bytes(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
    let cleaned: String = encoded
        .chars()
        .map(|character| match character {
            '+' => 'P',
            '/' => 'S',
            other => other,
        })
        .collect();
    format!("AAMkAG{cleaned}")
}

/// Random identifiers for things created at run time (events, subscriptions, request ids).
#[derive(Clone)]
pub struct RandomIds {
    random: ring::rand::SystemRandom,
}

impl Default for RandomIds {
    fn default() -> Self {
        RandomIds {
            random: ring::rand::SystemRandom::new(),
        }
    }
}

impl RandomIds {
    fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut bytes = [0u8; N];
        // The system random source only fails when the OS has no entropy source at all;
        // a zero-filled id is still unique enough for an emulator in that impossible case.
        let _ = self.random.fill(&mut bytes);
        bytes
    }

    pub fn guid(&self) -> String {
        let bytes: [u8; 16] = self.bytes();
        let a = u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]);
        let b = u64::from_le_bytes([
            bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
        ]);
        format_guid(a, b)
    }

    pub fn item_id(&self) -> String {
        let bytes: [u8; 30] = self.bytes();
        outlook_id_from_bytes(&bytes)
    }

    pub fn change_key(&self) -> String {
        let bytes: [u8; 15] = self.bytes();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn token(&self, n_bytes: usize) -> String {
        let mut bytes = vec![0u8; n_bytes];
        let _ = self.random.fill(&mut bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A number in 0.0..1.0 for fault rates.
    pub fn unit(&self) -> f64 {
        let bytes: [u8; 8] = self.bytes();
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A change key derived from a seed, for deterministic generated data.
pub fn seeded_change_key(random: &mut SeededRandom) -> String {
    let mut bytes = [0u8; 15];
    for chunk in bytes.chunks_mut(8) {
        let value = random.next_u64().to_le_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_guids() {
        let mut first = SeededRandom::new(7);
        let mut second = SeededRandom::new(7);
        assert_eq!(first.guid(), second.guid());
        assert_ne!(SeededRandom::new(8).guid(), SeededRandom::new(7).guid());
    }

    #[test]
    fn guid_has_the_canonical_shape() {
        let guid = RandomIds::default().guid();
        let groups: Vec<usize> = guid.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert_eq!(&guid[14..15], "4");
    }

    #[test]
    fn item_ids_have_no_underscore() {
        let id = SeededRandom::new(1).item_id();
        assert!(id.starts_with("AAMkAG"));
        assert!(!id.contains('_') && !id.contains('/') && !id.contains('+'));
    }
}
