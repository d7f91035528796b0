//! Imported keys: the token shapes and stored hashes of the systems teams move in from.
//!
//! An imported key keeps the verifier of its source. Per scheme this module knows which
//! presented strings it may apply to (their shape), how the verify path finds the row (the id
//! embedded in the string, or the digest itself) and how to compare. Pure: no I/O.
//!
//! | scheme | shape of the presented string | found by | stored (`verifier` column) |
//! |---|---|---|---|
//! | `argon2id-embedded-uuid` | `<word>_<word>_<uuid>_<secret>` | the UUID (the token id) | `legacy:argon2id-embedded-uuid:<PHC string of the whole string>` |
//! | `sha256` | 16-256 of `A-Z a-z 0-9 _ - . ~ + / =` | SHA-256 of the whole string | `legacy:sha256:<hex>` |
//! | `sha512` | `<8 alphanumerics>.<32 alphanumerics>` | SHA-512 of the whole string | `legacy:sha512:<hex>` |
//! | `sanctum` | `<id>\|<text ending in 40 characters and their crc32b>` | SHA-256 of the text after `\|` | `legacy:sanctum:<id>:<hex>` |
//!
//! The `lookup` column holds `<scheme>:<key>` for every imported key (the key is the digest in
//! lowercase hex, or the UUID), unique, so a digest finds its row with one index seek and a
//! re-import of the same hash is recognised.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::hash::unhex;

/// The verifier schemes of imported keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// An Argon2id PHC string of the whole token, found by the UUID inside it.
    Argon2idEmbeddedUuid,
    /// Hex SHA-256 of the whole token, found by the digest.
    Sha256,
    /// SHA-512 of the whole token (djangorestframework-api-key's `sha512$$<hex>`).
    Sha512,
    /// Laravel Sanctum: SHA-256 of the text after `<id>|`; the id must match too.
    Sanctum,
}

impl Scheme {
    pub const ALL: [Scheme; 4] = [
        Scheme::Argon2idEmbeddedUuid,
        Scheme::Sha256,
        Scheme::Sha512,
        Scheme::Sanctum,
    ];

    /// The name used in import files, the token view's `format` and the `lookup` column.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2idEmbeddedUuid => "argon2id-embedded-uuid",
            Scheme::Sha256 => "sha256",
            Scheme::Sha512 => "sha512",
            Scheme::Sanctum => "sanctum",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Scheme::ALL.into_iter().find(|k| k.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The range of `lookup` values of this scheme: `[start, end)`.
    pub fn lookup_range(self) -> (String, String) {
        (format!("{}:", self.name()), format!("{};", self.name()))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A token's format as the token view shows it: `native` or a scheme's name, read from its
/// `lookup` column.
pub fn format_of(lookup: Option<&str>) -> &str {
    match lookup {
        None => "native",
        Some(l) => l.split_once(':').map_or(l, |(scheme, _)| scheme),
    }
}

/// A set of schemes: those present in the database, which the verify path tries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schemes(pub u8);

impl Schemes {
    pub fn contains(self, s: Scheme) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn with(self, s: Scheme) -> Self {
        Schemes(self.0 | s.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A stored verifier of an imported key.
#[derive(Clone, PartialEq, Eq)]
pub enum LegacyVerifier {
    Argon2id(String),
    Sha256([u8; 32]),
    Sha512([u8; 64]),
    Sanctum { id: u64, digest: [u8; 32] },
}

impl fmt::Debug for LegacyVerifier {
    // Like native verifiers, never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LegacyVerifier::{}([redacted])", self.scheme())
    }
}

/// Why an imported hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHash {
    #[error("hash is not an Argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash)")]
    Argon2id,
    #[error("Argon2id parameters are too costly (at most 256 MiB of memory)")]
    Argon2idTooCostly,
    #[error("hash is not 64 hexadecimal digits (a SHA-256 digest)")]
    Sha256,
    #[error("hash is not 128 hexadecimal digits (a SHA-512 digest), with or without sha512$$")]
    Sha512,
    #[error("sanctum_id must be a positive integer")]
    SanctumId,
}

/// Most memory an imported Argon2id hash may ask for, KiB (as for native verifiers).
const MAX_ARGON2_M_COST: u32 = 256 * 1024;

impl LegacyVerifier {
    /// The verifier of an imported `hash` of `scheme` (`sanctum_id` for Sanctum).
    ///
    /// # Errors
    /// [`BadHash`] when the hash is malformed for its scheme.
    pub fn from_import(
        scheme: Scheme,
        hash: &str,
        sanctum_id: Option<u64>,
    ) -> Result<Self, BadHash> {
        match scheme {
            Scheme::Argon2idEmbeddedUuid => {
                let parsed = argon2::password_hash::phc::PasswordHash::new(hash)
                    .map_err(|_| BadHash::Argon2id)?;
                if parsed.algorithm.as_str() != "argon2id"
                    || parsed.salt.is_none()
                    || parsed.hash.is_none()
                {
                    return Err(BadHash::Argon2id);
                }
                let params = argon2::Params::try_from(&parsed).map_err(|_| BadHash::Argon2id)?;
                if params.m_cost() > MAX_ARGON2_M_COST {
                    return Err(BadHash::Argon2idTooCostly);
                }
                Ok(LegacyVerifier::Argon2id(hash.to_string()))
            }
            Scheme::Sha256 => Ok(LegacyVerifier::Sha256(unhex(hash).ok_or(BadHash::Sha256)?)),
            Scheme::Sha512 => {
                let hex = hash.strip_prefix("sha512$$").unwrap_or(hash);
                Ok(LegacyVerifier::Sha512(unhex(hex).ok_or(BadHash::Sha512)?))
            }
            Scheme::Sanctum => {
                let id = sanctum_id.filter(|&n| n > 0).ok_or(BadHash::SanctumId)?;
                Ok(LegacyVerifier::Sanctum {
                    id,
                    digest: unhex(hash).ok_or(BadHash::Sha256)?,
                })
            }
        }
    }

    pub fn scheme(&self) -> Scheme {
        match self {
            LegacyVerifier::Argon2id(_) => Scheme::Argon2idEmbeddedUuid,
            LegacyVerifier::Sha256(_) => Scheme::Sha256,
            LegacyVerifier::Sha512(_) => Scheme::Sha512,
            LegacyVerifier::Sanctum { .. } => Scheme::Sanctum,
        }
    }

    /// The `lookup` column of a key with this verifier and token id.
    pub fn lookup(&self, id: Uuid) -> String {
        let key = match self {
            LegacyVerifier::Argon2id(_) => id.to_string(),
            LegacyVerifier::Sha256(d) | LegacyVerifier::Sanctum { digest: d, .. } => hex(d),
            LegacyVerifier::Sha512(d) => hex(d),
        };
        format!("{}:{key}", self.scheme().name())
    }

    /// The self-describing string stored in the `verifier` column.
    pub fn encode(&self) -> String {
        let body = match self {
            LegacyVerifier::Argon2id(phc) => phc.clone(),
            LegacyVerifier::Sha256(d) => hex(d),
            LegacyVerifier::Sha512(d) => hex(d),
            LegacyVerifier::Sanctum { id, digest } => format!("{id}:{}", hex(digest)),
        };
        format!("legacy:{}:{body}", self.scheme().name())
    }

    /// Whether a presented string of the right shape matches. Digests compare in constant
    /// time; Argon2id is not checked here (it needs the Argon2id pool): `None`.
    pub fn matches_digest(&self, p: &Presented<'_>) -> Option<bool> {
        match (self, &p.key) {
            (LegacyVerifier::Argon2id(_), _) => None,
            (LegacyVerifier::Sha256(d), Key::Digest { .. }) if p.scheme == Scheme::Sha256 => {
                Some(d.ct_eq(&p.sha256).into())
            }
            (LegacyVerifier::Sha512(d), Key::Digest { sha512: Some(x) }) => Some(d.ct_eq(x).into()),
            (LegacyVerifier::Sanctum { id, digest }, Key::Digest { .. })
                if p.scheme == Scheme::Sanctum =>
            {
                Some(bool::from(digest.ct_eq(&p.sha256)) & (Some(*id) == p.sanctum_id))
            }
            _ => Some(false),
        }
    }
}

impl FromStr for LegacyVerifier {
    type Err = BadHash;

    /// Parses a `verifier` column written by [`LegacyVerifier::encode`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("legacy:").ok_or(BadHash::Sha256)?;
        let (scheme, body) = rest.split_once(':').ok_or(BadHash::Sha256)?;
        match Scheme::from_name(scheme).ok_or(BadHash::Sha256)? {
            Scheme::Sanctum => {
                let (id, hex) = body.split_once(':').ok_or(BadHash::SanctumId)?;
                let id = id.parse().map_err(|_| BadHash::SanctumId)?;
                LegacyVerifier::from_import(Scheme::Sanctum, hex, Some(id))
            }
            Scheme::Sha512 => Ok(LegacyVerifier::Sha512(unhex(body).ok_or(BadHash::Sha512)?)),
            scheme => LegacyVerifier::from_import(scheme, body, None),
        }
    }
}

/// How the verify path finds the row of a presented string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The token id, embedded in the string.
    Id(Uuid),
    /// A digest of the string; `sha512` is set for the SHA-512 scheme.
    Digest { sha512: Option<[u8; 64]> },
}

/// A presented string recognised as possibly a key of `scheme`.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    pub key: Key,
    /// The whole presented string (what Argon2id hashes).
    pub text: &'a str,
    /// SHA-256 of what the scheme hashes (the whole string, or Sanctum's text after `|`). Also
    /// the in-memory fast digest of an Argon2id key once it has matched.
    pub sha256: [u8; 32],
    pub sanctum_id: Option<u64>,
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Presented({}, [redacted])", self.scheme)
    }
}

impl Presented<'_> {
    /// The key of the verify path's digest cache: the scheme and 32 bytes of the digest the
    /// row is found by.
    pub fn cache_key(&self) -> (u8, [u8; 32]) {
        let mut k = self.sha256;
        if let Key::Digest { sha512: Some(d) } = &self.key {
            k.copy_from_slice(&d[..32]);
        }
        (self.scheme as u8, k)
    }

    /// The `lookup` column value the row must have (digest schemes).
    pub fn lookup(&self) -> String {
        let key = match &self.key {
            Key::Id(id) => id.to_string(),
            Key::Digest { sha512: Some(d) } => hex(d),
            Key::Digest { sha512: None } => hex(&self.sha256),
        };
        format!("{}:{key}", self.scheme.name())
    }
}

/// Longest presented string any scheme considers.
const MAX_LEN: usize = 300;

/// The schemes among `enabled` whose shape `s` has, in the order the verify path tries them
/// (the embedded id first: one cache probe by id). Nothing for a string no enabled scheme
/// could have produced, so garbage costs no database read.
pub fn recognise(enabled: Schemes, s: &str) -> impl Iterator<Item = Presented<'_>> {
    let ok = !enabled.is_empty() && !s.is_empty() && s.len() <= MAX_LEN;
    Scheme::ALL
        .into_iter()
        .filter(move |&k| ok && enabled.contains(k))
        .filter_map(move |k| shape(k, s))
}

fn shape(scheme: Scheme, s: &str) -> Option<Presented<'_>> {
    let sha = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
    let presented = |key, sha256, sanctum_id| Presented {
        scheme,
        key,
        text: s,
        sha256,
        sanctum_id,
    };
    match scheme {
        Scheme::Argon2idEmbeddedUuid => {
            let id = embedded_uuid(s)?;
            Some(presented(Key::Id(id), sha(s), None))
        }
        Scheme::Sha256 => {
            let ok = (16..=256).contains(&s.len())
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'_' | b'-' | b'.' | b'~' | b'+' | b'/' | b'=')
                });
            ok.then(|| presented(Key::Digest { sha512: None }, sha(s), None))
        }
        Scheme::Sha512 => {
            let (prefix, secret) = s.split_once('.')?;
            let ok = prefix.len() == 8
                && secret.len() == 32
                && prefix
                    .bytes()
                    .chain(secret.bytes())
                    .all(|b| b.is_ascii_alphanumeric());
            ok.then(|| {
                let d: [u8; 64] = Sha512::digest(s.as_bytes()).into();
                presented(Key::Digest { sha512: Some(d) }, sha(s), None)
            })
        }
        Scheme::Sanctum => {
            let (id, token) = s.split_once('|')?;
            let id_ok = (1..=19).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_digit())
                && !id.starts_with('0');
            let id: u64 = if id_ok { id.parse().ok()? } else { return None };
            if !(48..=256).contains(&token.len())
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            {
                return None;
            }
            // Sanctum appends crc32b of its 40 random characters (after any configured prefix):
            // a mistyped token is refused here, without a read.
            let (entropy, crc) = token[token.len() - 48..].split_at(40);
            if crc != format!("{:08x}", crc32fast::hash(entropy.as_bytes())) {
                return None;
            }
            Some(presented(
                Key::Digest { sha512: None },
                sha(token),
                Some(id),
            ))
        }
    }
}

/// The UUID of `<word>_<word>_<uuid>_<secret>`: words of 1-16 lowercase letters and digits, a
/// hyphenated UUID (any version, either case), a secret of visible ASCII.
fn embedded_uuid(s: &str) -> Option<Uuid> {
    let word = |w: &str| {
        (1..=16).contains(&w.len())
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let (prefix, rest) = s.split_once('_')?;
    let (kind, rest) = rest.split_once('_')?;
    if !word(prefix) || !word(kind) || rest.len() < 38 || !rest.is_char_boundary(36) {
        return None;
    }
    let (id, secret) = rest.split_at(36);
    let secret = secret.strip_prefix('_')?;
    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    if id.bytes().filter(|&b| b == b'-').count() != 4 {
        return None;
    }
    Uuid::try_parse(id).ok()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Schemes = Schemes(0b1111);

    fn sha256_hex(s: &str) -> String {
        hex(&Sha256::digest(s.as_bytes()))
    }

    fn sanctum_token(entropy: &str) -> String {
        format!("{entropy}{:08x}", crc32fast::hash(entropy.as_bytes()))
    }

    #[test]
    fn nothing_is_recognised_when_no_scheme_is_enabled() {
        assert_eq!(
            recognise(Schemes::default(), "tok_abcdefabcdefabcdef").count(),
            0
        );
    }

    #[test]
    fn the_ibex_test_vector_is_found_by_its_embedded_uuid() {
        let s = "ibex_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY";
        let first = recognise(ALL, s).next().unwrap();
        assert_eq!(first.scheme, Scheme::Argon2idEmbeddedUuid);
        assert_eq!(
            first.key,
            Key::Id("00000000-0000-0000-0000-000000000004".parse().unwrap())
        );
    }

    #[test]
    fn each_source_shape_is_recognised_by_its_scheme_only_when_enabled() {
        let laravel = format!("tok_{}", "ab12".repeat(16));
        let flask = format!("spci_{}", "A-_b".repeat(10) + "xyz");
        let drf = format!("{}.{}", "Ab3dEf7h", "x".repeat(32));
        let sanctum = format!("17|{}", sanctum_token(&"q".repeat(40)));
        for (s, scheme) in [
            (laravel.as_str(), Scheme::Sha256),
            (flask.as_str(), Scheme::Sha256),
            (drf.as_str(), Scheme::Sha512),
            (sanctum.as_str(), Scheme::Sanctum),
        ] {
            let found: Vec<Scheme> = recognise(ALL, s).map(|p| p.scheme).collect();
            assert!(found.contains(&scheme), "{s}: {found:?}");
            assert_eq!(
                recognise(Schemes::default().with(Scheme::Argon2idEmbeddedUuid), s).count(),
                0
            );
        }
    }

    #[test]
    fn a_sanctum_token_with_a_wrong_crc_or_id_is_not_recognised() {
        let good = sanctum_token(&"q".repeat(40));
        let mut bad = good.clone();
        bad.replace_range(0..1, "r");
        let only = Schemes::default().with(Scheme::Sanctum);
        assert_eq!(recognise(only, &format!("5|{good}")).count(), 1);
        assert_eq!(recognise(only, &format!("5|{bad}")).count(), 0);
        assert_eq!(recognise(only, &format!("05|{good}")).count(), 0);
        assert_eq!(recognise(only, &format!("x|{good}")).count(), 0);
    }

    #[test]
    fn digest_schemes_match_only_their_own_plaintext() {
        let s = format!("tok_{}", "0f".repeat(32));
        let v = LegacyVerifier::from_import(Scheme::Sha256, &sha256_hex(&s), None).unwrap();
        let p = recognise(ALL, &s)
            .find(|p| p.scheme == Scheme::Sha256)
            .unwrap();
        assert_eq!(v.matches_digest(&p), Some(true));
        assert_eq!(p.lookup(), v.lookup(Uuid::nil()));
        let other = format!("tok_{}", "0e".repeat(32));
        let q = recognise(ALL, &other)
            .find(|p| p.scheme == Scheme::Sha256)
            .unwrap();
        assert_eq!(v.matches_digest(&q), Some(false));
    }

    #[test]
    fn a_sha512_hash_is_accepted_with_or_without_its_django_prefix() {
        let s = format!("{}.{}", "Ab3dEf7h", "x".repeat(32));
        let hex = hex(&Sha512::digest(s.as_bytes()));
        let a = LegacyVerifier::from_import(Scheme::Sha512, &hex, None).unwrap();
        let b =
            LegacyVerifier::from_import(Scheme::Sha512, &format!("sha512$${hex}"), None).unwrap();
        assert_eq!(a, b);
        let p = recognise(ALL, &s)
            .find(|p| p.scheme == Scheme::Sha512)
            .unwrap();
        assert_eq!(a.matches_digest(&p), Some(true));
        assert_eq!(p.lookup(), a.lookup(Uuid::nil()));
    }

    #[test]
    fn a_sanctum_key_needs_its_digest_and_its_id() {
        let token = sanctum_token(&"Z".repeat(40));
        let v = LegacyVerifier::from_import(Scheme::Sanctum, &sha256_hex(&token), Some(9)).unwrap();
        let right = format!("9|{token}");
        let wrong_id = format!("8|{token}");
        let p = recognise(ALL, &right)
            .find(|p| p.scheme == Scheme::Sanctum)
            .unwrap();
        let q = recognise(ALL, &wrong_id)
            .find(|p| p.scheme == Scheme::Sanctum)
            .unwrap();
        assert_eq!(v.matches_digest(&p), Some(true));
        assert_eq!(v.matches_digest(&q), Some(false));
    }

    #[test]
    fn verifiers_round_trip_through_their_stored_string_and_never_print() {
        let phc = "$argon2id$v=19$m=65536,t=3,p=4$v7OU5izBPGnx4P47/nOoGQ$Ozd/9sqIqvtVBwk5fdfTGnXGkmflQej0xtooVgaAxh8";
        let digest = sha256_hex("x");
        for v in [
            LegacyVerifier::from_import(Scheme::Argon2idEmbeddedUuid, phc, None).unwrap(),
            LegacyVerifier::from_import(Scheme::Sha256, &digest, None).unwrap(),
            LegacyVerifier::from_import(Scheme::Sha512, &"ab".repeat(64), None).unwrap(),
            LegacyVerifier::from_import(Scheme::Sanctum, &digest, Some(3)).unwrap(),
        ] {
            let stored = v.encode();
            assert_eq!(stored.parse::<LegacyVerifier>().unwrap(), v);
            assert!(!format!("{v:?}").contains(&digest));
            assert!(!format!("{v:?}").contains("Ozd"));
        }
    }

    #[test]
    fn malformed_hashes_are_refused_with_the_reason() {
        assert_eq!(
            LegacyVerifier::from_import(Scheme::Sha256, "abc", None),
            Err(BadHash::Sha256)
        );
        assert_eq!(
            LegacyVerifier::from_import(Scheme::Sha512, &"g".repeat(128), None),
            Err(BadHash::Sha512)
        );
        assert_eq!(
            LegacyVerifier::from_import(Scheme::Argon2idEmbeddedUuid, "$argon2i$v=19$x", None),
            Err(BadHash::Argon2id)
        );
        assert_eq!(
            LegacyVerifier::from_import(Scheme::Sanctum, &sha256_hex("x"), None),
            Err(BadHash::SanctumId)
        );
        let costly = "$argon2id$v=19$m=1048576,t=3,p=4$v7OU5izBPGnx4P47/nOoGQ$Ozd/9sqIqvtVBwk5fdfTGnXGkmflQej0xtooVgaAxh8";
        assert_eq!(
            LegacyVerifier::from_import(Scheme::Argon2idEmbeddedUuid, costly, None),
            Err(BadHash::Argon2idTooCostly)
        );
    }

    #[test]
    fn the_format_comes_from_the_lookup_column() {
        assert_eq!(format_of(None), "native");
        assert_eq!(format_of(Some("sha512:ab")), "sha512");
        assert_eq!(
            format_of(Some(
                "argon2id-embedded-uuid:00000000-0000-0000-0000-000000000004"
            )),
            "argon2id-embedded-uuid"
        );
    }
}

#[cfg(test)]
mod argon2_vector {
    use crate::token::hash::Argon2Workspace;

    #[test]
    fn the_ibex_vector_verifies_the_whole_token_and_not_the_secret_alone() {
        let phc = "$argon2id$v=19$m=65536,t=3,p=4$v7OU5izBPGnx4P47/nOoGQ$Ozd/9sqIqvtVBwk5fdfTGnXGkmflQej0xtooVgaAxh8";
        let mut w = Argon2Workspace::default();
        assert!(w.matches_bytes(
            phc,
            b"ibex_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY"
        ));
        assert!(!w.matches_bytes(phc, b"LOCALDEVELOPMENTONLY"));
    }
}
