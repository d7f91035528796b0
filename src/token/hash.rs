//! Verifiers: what is stored instead of a token's secret.
//!
//! A verifier is a self-describing string so algorithms can coexist and migrate:
//! `sha256:<hex>` or an Argon2id PHC string (`$argon2id$v=19$...`).

use std::fmt;
use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::secret::Secret;

/// Which algorithm new verifiers use. Existing verifiers keep their own algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HashAlgorithm {
    /// SHA-256 of the 256-bit secret: microseconds to check, and a 256-bit random secret cannot
    /// be brute-forced from its hash.
    #[default]
    Sha256,
    /// Argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane), run on a blocking thread.
    Argon2id,
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Argon2id => "argon2id",
        })
    }
}

/// A stored verifier, decoded.
#[derive(Clone, PartialEq, Eq)]
pub enum Verifier {
    Sha256([u8; 32]),
    Argon2id(String),
}

impl fmt::Debug for Verifier {
    // A verifier is not a secret in the cryptographic sense, but it must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verifier::Sha256(_) => f.write_str("Verifier::Sha256([redacted])"),
            Verifier::Argon2id(_) => f.write_str("Verifier::Argon2id([redacted])"),
        }
    }
}

/// A stored verifier string that could not be decoded (corrupt row, unknown algorithm).
#[derive(Debug, thiserror::Error)]
#[error("unrecognised verifier format")]
pub struct BadVerifier;

/// SHA-256 of a secret.
pub fn sha256(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// An Argon2id PHC string of `input` (a password) with OWASP's parameters (19 MiB, 2 passes,
/// 1 lane) and a random salt. Tens of milliseconds of CPU: run it on the Argon2id pool.
///
/// # Errors
/// Only if Argon2 fails (random salt unavailable).
pub fn argon2id_phc(input: &[u8]) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(input)
        .map(|phc| phc.to_string())
        .map_err(|e| anyhow::anyhow!("argon2id hashing failed: {e}"))
}

/// Constant-time equality of two digests.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // Word by word, then one `subtle` comparison: no branch on the data, as with `subtle`'s
    // slice comparison, which takes an optimisation barrier per byte (a tenth of the cost).
    let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
    let diff = a.iter().zip(b).fold(0u64, |d, (x, y)| {
        d | (u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y))
    });
    diff.ct_eq(&0).into()
}

impl Verifier {
    /// Computes the verifier of `secret` with `alg`. Argon2id costs tens of milliseconds of CPU:
    /// call it from a blocking thread.
    ///
    /// # Errors
    /// Only if Argon2 fails (random salt unavailable).
    pub fn compute(alg: HashAlgorithm, secret: &Secret<[u8; 32]>) -> anyhow::Result<Self> {
        Ok(match alg {
            HashAlgorithm::Sha256 => Verifier::Sha256(sha256(secret.expose())),
            HashAlgorithm::Argon2id => {
                let phc = Argon2::default()
                    .hash_password(secret.expose())
                    .map_err(|e| anyhow::anyhow!("argon2id hashing failed: {e}"))?;
                Verifier::Argon2id(phc.to_string())
            }
        })
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        match self {
            Verifier::Sha256(_) => HashAlgorithm::Sha256,
            Verifier::Argon2id(_) => HashAlgorithm::Argon2id,
        }
    }

    /// Checks `secret` against this verifier. SHA-256 compares in constant time; Argon2id costs
    /// its full work factor (call it from a blocking thread).
    pub fn matches(&self, secret: &Secret<[u8; 32]>) -> bool {
        match self {
            Verifier::Sha256(d) => digest_eq(d, &sha256(secret.expose())),
            Verifier::Argon2id(phc) => match PasswordHash::new(phc) {
                Ok(parsed) => Argon2::default()
                    .verify_password(secret.expose(), &parsed)
                    .is_ok(),
                Err(_) => false,
            },
        }
    }

    /// The self-describing string stored in the database.
    pub fn encode(&self) -> String {
        match self {
            Verifier::Sha256(d) => {
                let mut s = String::with_capacity(7 + 64);
                s.push_str("sha256:");
                for b in d {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }
            Verifier::Argon2id(phc) => phc.clone(),
        }
    }
}

/// Exactly `2 * N` hex digits (either case); `None` for anything else.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

impl FromStr for Verifier {
    type Err = BadVerifier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            // A digit table, not `from_str_radix` per pair: every cache miss parses one.
            unhex(hex).map(Verifier::Sha256).ok_or(BadVerifier)
        } else if s.starts_with("$argon2id$") {
            PasswordHash::new(s).map_err(|_| BadVerifier)?;
            Ok(Verifier::Argon2id(s.to_string()))
        } else {
            Err(BadVerifier)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret<[u8; 32]> {
        Secret::new([b; 32])
    }

    #[test]
    fn digests_are_equal_only_when_every_bit_is() {
        let a = sha256(&[7; 32]);
        assert!(digest_eq(&a, &a.clone()));
        for byte in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[byte] ^= 1 << bit;
                assert!(!digest_eq(&a, &b), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn a_sha256_verifier_of_anything_but_64_hex_digits_is_refused_without_a_panic() {
        let multi_byte = format!("sha256:0é{}", "0".repeat(61));
        let plus = format!("sha256:+a{}", "0".repeat(62));
        assert_eq!(multi_byte.len(), "sha256:".len() + 64);
        assert!(multi_byte.parse::<Verifier>().is_err());
        assert!(plus.parse::<Verifier>().is_err());
    }

    #[test]
    fn a_sha256_verifier_reads_hex_digits_of_either_case() {
        // Arrange
        let v = Verifier::Sha256(std::array::from_fn(|i| (i as u8).wrapping_mul(37)));
        let lower = v.encode();

        // Act
        let upper = format!("sha256:{}", lower["sha256:".len()..].to_ascii_uppercase());

        // Assert
        assert_ne!(upper, lower);
        assert_eq!(upper.parse::<Verifier>().unwrap(), v);
        assert_eq!(lower.parse::<Verifier>().unwrap(), v);
    }

    #[test]
    fn sha256_verifier_matches_only_its_secret_and_round_trips() {
        let v = Verifier::compute(HashAlgorithm::Sha256, &secret(1)).unwrap();
        assert!(v.matches(&secret(1)));
        assert!(!v.matches(&secret(2)));
        let enc = v.encode();
        assert!(enc.starts_with("sha256:"));
        assert_eq!(enc.parse::<Verifier>().unwrap(), v);
    }

    #[test]
    fn argon2id_verifier_is_a_phc_string_that_matches_only_its_secret() {
        let v = Verifier::compute(HashAlgorithm::Argon2id, &secret(3)).unwrap();
        let enc = v.encode();
        assert!(enc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{enc}");
        assert!(v.matches(&secret(3)));
        assert!(!v.matches(&secret(4)));
        assert_eq!(enc.parse::<Verifier>().unwrap(), v);
    }

    #[test]
    fn corrupt_verifiers_are_rejected() {
        for bad in [
            "",
            "sha256:",
            "sha256:zz",
            "md5:abcd",
            "$argon2id$garbage",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<Verifier>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_prints_the_digest() {
        let v = Verifier::compute(HashAlgorithm::Sha256, &secret(5)).unwrap();
        let enc = v.encode();
        assert!(!format!("{v:?}").contains(&enc[7..]));
    }
}

/// A reusable Argon2id workspace: checks PHC verifiers without allocating their memory anew, so a
/// worker thread holds one block buffer for its whole life instead of asking the allocator for
/// 19 MiB on every check.
#[derive(Default)]
pub struct Argon2Workspace {
    blocks: Vec<argon2::Block>,
}

/// Verifiers asking for more memory than this (KiB) are treated as corrupt rather than honoured.
const MAX_ARGON2_M_COST: u32 = 256 * 1024;

impl Argon2Workspace {
    /// Whether `secret` matches the Argon2id PHC string `phc`, compared in constant time.
    /// `false` for a malformed PHC string as for a wrong secret.
    pub fn matches(&mut self, phc: &str, secret: &Secret<[u8; 32]>) -> bool {
        self.matches_bytes(phc, secret.expose())
    }

    /// Whether `input` (a password, say) matches the Argon2id PHC string `phc`, compared in
    /// constant time. `false` for a malformed PHC string as for a wrong input.
    pub fn matches_bytes(&mut self, phc: &str, input: &[u8]) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
            return false;
        };
        let Ok(params) = argon2::Params::try_from(&hash) else {
            return false;
        };
        if params.m_cost() > MAX_ARGON2_M_COST || expected.as_bytes().len() > 64 {
            return false;
        }
        let n = params.block_count();
        if self.blocks.len() < n {
            self.blocks.resize(n, argon2::Block::default());
        }
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut buf = [0u8; 64];
        let out = &mut buf[..expected.as_bytes().len()];
        if argon
            .hash_password_into_with_memory(input, salt.as_ref(), &mut *out, &mut self.blocks[..n])
            .is_err()
        {
            return false;
        }
        out.ct_eq(expected.as_bytes()).into()
    }
}

#[cfg(test)]
mod workspace_tests {
    use super::*;

    #[test]
    fn the_workspace_agrees_with_the_library_verifier_and_is_reused() {
        let secret = Secret::new([9u8; 32]);
        let Verifier::Argon2id(phc) = Verifier::compute(HashAlgorithm::Argon2id, &secret).unwrap()
        else {
            unreachable!()
        };
        let mut ws = Argon2Workspace::default();
        assert!(ws.matches(&phc, &secret));
        assert!(!ws.matches(&phc, &Secret::new([8u8; 32])));
        assert!(
            ws.matches(&phc, &secret),
            "a second check reuses the buffer"
        );
        assert!(!ws.matches("$argon2id$garbage", &secret));
        let huge = phc.replace("m=19456", "m=4194304");
        assert!(
            !ws.matches(&huge, &secret),
            "absurd memory costs are refused"
        );
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of the stored-verifier parser (input from the database, not from clients).

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn sha256_verifiers_round_trip(secret in any::<[u8; 32]>()) {
            let v = Verifier::compute(HashAlgorithm::Sha256, &Secret::new(secret)).unwrap();
            prop_assert_eq!(v.encode().parse::<Verifier>().unwrap(), v.clone());
            prop_assert!(v.matches(&Secret::new(secret)));
        }

        /// Once found here: a 64-byte `sha256:` tail with a multi-byte character at an odd byte
        /// offset panicked on a slice inside that character.
        #[test]
        fn verifier_strings_never_panic_the_parser(
            s in prop_oneof![
                "[ -~]{0,80}",
                "sha256:[0-9a-fA-Fg-z+]{60,68}",
                "sha256:[0-9é+]{58,64}",
                ".{0,80}",
                "sha256:.{60,66}",
                "\\$argon2id\\$[ -~]{0,80}",
            ],
        ) {
            if let Ok(v) = s.parse::<Verifier>() {
                // What parses encodes to a string that parses back to the same verifier.
                prop_assert_eq!(v.encode().parse::<Verifier>().unwrap(), v);
            }
        }

        #[test]
        fn malformed_phc_strings_never_match(s in "\\$argon2id\\$[ -~]{0,60}", secret in any::<[u8; 32]>()) {
            // Cheap: only strings that fail to parse as PHC or lack a hash (no Argon2 runs).
            prop_assume!(PasswordHash::new(&s).map(|h| h.hash.is_none()).unwrap_or(true));
            prop_assert!(!Argon2Workspace::default().matches(&s, &Secret::new(secret)));
        }
    }
}
