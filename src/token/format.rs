//! The token wire format: `<prefix>_<kind>_<id>_<secret><checksum>`.
//!
//! - `prefix`: deployment-wide, `[a-z][a-z0-9]{0,15}`, default `lk`;
//! - `kind`: `pat` or `svc`;
//! - `id`: the token's UUID v7, lowercase and hyphenated;
//! - `secret`: 32 CSPRNG bytes as 43 base62 characters (big-endian, zero-padded);
//! - `checksum`: CRC32 of everything before it, as 6 base62 characters.
//!
//! Parsing accepts exactly this grammar; every rejection is the same [`InvalidToken`].

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::secret::Secret;

/// Length of the base62 secret part.
pub const SECRET_LEN: usize = 43;
/// Length of the base62 checksum part.
pub const CHECKSUM_LEN: usize = 6;
const UUID_LEN: usize = 36;
const MAX_PREFIX_LEN: usize = 16;
/// The longest string that can be a token (with a 16-character prefix).
pub const MAX_TOKEN_LEN: usize =
    MAX_PREFIX_LEN + 1 + 3 + 1 + UUID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The one error for every string that is not a well-formed token of this deployment.
/// It deliberately says nothing about what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid token")]
pub struct InvalidToken;

/// A validated token prefix: `[a-z][a-z0-9]{0,15}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self("lk".to_string())
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_PREFIX_LEN
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "token prefix must match [a-z][a-z0-9]{{0,15}}, got {s:?}"
            ))
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of a token: a personal access token (type 1) or a service token (type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Pat,
    Svc,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Pat => "pat",
            TokenKind::Svc => "svc",
        }
    }

    /// The numeric type used on the wire (gRPC enum, database): 1 = pat, 2 = svc.
    pub fn code(self) -> i64 {
        match self {
            TokenKind::Pat => 1,
            TokenKind::Svc => 2,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(TokenKind::Pat),
            2 => Some(TokenKind::Svc),
            _ => None,
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "pat" => Some(TokenKind::Pat),
            "svc" => Some(TokenKind::Svc),
            _ => None,
        }
    }
}

/// A token that passed [`parse`]: grammar, checksum and prefix are right. Whether it exists and
/// its secret matches is for the verifier to say.
#[derive(Debug, Clone)]
pub struct ParsedToken {
    pub kind: TokenKind,
    pub id: Uuid,
    pub secret: Secret<[u8; 32]>,
}

/// A freshly generated token: its id, kind, raw secret and the plaintext string handed to the
/// client once.
#[derive(Debug)]
pub struct GeneratedToken {
    pub id: Uuid,
    pub kind: TokenKind,
    pub secret: Secret<[u8; 32]>,
    pub plaintext: Secret<String>,
}

/// Generates a new token of `kind` with a UUID v7 id and 32 bytes from the OS CSPRNG.
///
/// # Errors
/// Only if the operating system's random source fails.
pub fn generate(prefix: &Prefix, kind: TokenKind) -> Result<GeneratedToken, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let id = Uuid::now_v7();
    let plaintext = format_token(prefix, kind, id, &secret);
    Ok(GeneratedToken {
        id,
        kind,
        secret: Secret::new(secret),
        plaintext: Secret::new(plaintext),
    })
}

/// Formats the parts of a token into its wire form, checksum included.
pub fn format_token(prefix: &Prefix, kind: TokenKind, id: Uuid, secret: &[u8; 32]) -> String {
    let mut s = String::with_capacity(MAX_TOKEN_LEN);
    s.push_str(prefix.as_str());
    s.push('_');
    s.push_str(kind.as_str());
    s.push('_');
    s.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    s.push('_');
    s.push_str(&base62_secret(secret));
    let crc = crc32fast::hash(s.as_bytes());
    s.push_str(&encode_checksum(crc));
    s
}

/// The hint shown to people in lists: prefix, kind and the first 8 characters of the id.
pub fn display_hint(prefix: &Prefix, kind: TokenKind, id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("{}_{}_{}…", prefix.as_str(), kind.as_str(), &hex[..8])
}

/// Replaces every word that looks like a token (`..._pat_...` or `..._svc_...`, or any word of
/// 40 characters or more: the keys imported from other systems have no common shape, and no
/// message of ours has such a word, a UUID being 36) with `[redacted]`. Used on every error
/// message that may quote client input.
pub fn redact(text: &str) -> String {
    let is_sep = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '"' | '`' | '\'' | ',' | '(' | ')' | '[' | ']' | '{' | '}'
            )
    };
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("_pat_") || word.contains("_svc_") || word.chars().count() >= 40 {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_sep(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Parses a token string of this deployment (`expected` prefix).
///
/// # Errors
/// [`InvalidToken`] for anything that is not exactly the grammar, has a wrong checksum, another
/// prefix, a non-canonical secret or an id that is not a lowercase hyphenated UUID v7.
pub fn parse(expected: &Prefix, s: &str) -> Result<ParsedToken, InvalidToken> {
    // The layout is fixed once the prefix is known, so every part is checked in place, on bytes
    // (non-ASCII input fails the per-byte checks), without splitting or allocating.
    let b = s.as_bytes();
    let p = expected.as_str().len();
    let id_at = p + 5;
    let secret_at = id_at + UUID_LEN + 1;
    let checksum_at = secret_at + SECRET_LEN;
    if b.len() != checksum_at + CHECKSUM_LEN
        || &b[..p] != expected.as_str().as_bytes()
        || b[p] != b'_'
        || b[p + 4] != b'_'
        || b[secret_at - 1] != b'_'
    {
        return Err(InvalidToken);
    }
    let kind = match &b[p + 1..p + 4] {
        b"pat" => TokenKind::Pat,
        b"svc" => TokenKind::Svc,
        _ => return Err(InvalidToken),
    };
    let id = parse_id(&b[id_at..secret_at - 1])?;
    let checksum = decode_checksum(&b[checksum_at..]).ok_or(InvalidToken)?;
    if checksum != u64::from(crc32fast::hash(&b[..checksum_at])) {
        return Err(InvalidToken);
    }
    let secret = decode_secret(&b[secret_at..checksum_at]).ok_or(InvalidToken)?;
    Ok(ParsedToken {
        kind,
        id,
        secret: Secret::new(secret),
    })
}

fn parse_id(b: &[u8]) -> Result<Uuid, InvalidToken> {
    // 36 bytes can only be the hyphenated form, which uuid's parser checks and decodes (in a
    // third of a hand-written loop's instructions); only lowercase is canonical.
    if b.len() != UUID_LEN || b.iter().any(u8::is_ascii_uppercase) {
        return Err(InvalidToken);
    }
    let id = Uuid::try_parse_ascii(b).map_err(|_| InvalidToken)?;
    if id.get_version_num() != 7 || id.get_variant() != uuid::Variant::RFC4122 {
        return Err(InvalidToken);
    }
    Ok(id)
}

/// The value of the 6 base62 checksum digits. Equal values mean equal spellings, as the
/// width is fixed.
fn decode_checksum(b: &[u8]) -> Option<u64> {
    b.iter()
        .try_fold(0u64, |n, &c| Some(n * 62 + u64::from(digit_value(c)?)))
}

/// Base62 digit values by byte (`NOT_A_DIGIT` elsewhere): one load per digit on the verify path.
const DIGIT_VALUES: [u8; 256] = {
    let mut t = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};
const NOT_A_DIGIT: u8 = 0xff;

fn digit_value(c: u8) -> Option<u32> {
    match DIGIT_VALUES[usize::from(c)] {
        NOT_A_DIGIT => None,
        v => Some(u32::from(v)),
    }
}

/// Encodes 32 bytes (a big-endian 256-bit number) as exactly 43 base62 digits.
/// 32 bytes as 43 base62 characters (fixed width): a token's secret, and the other random
/// secrets of the service (session ids, setup tokens).
pub fn base62_secret(bytes: &[u8; 32]) -> String {
    let mut n = *bytes;
    let mut out = [b'0'; SECRET_LEN];
    for slot in out.iter_mut().rev() {
        // Long division of the 256-bit number by 62.
        let mut rem: u32 = 0;
        for byte in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*byte);
            *byte = (cur / 62) as u8;
            rem = cur % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    // The alphabet is ASCII, so this cannot fail.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Decodes 43 base62 digits; `None` for a bad digit or a value of 2^256 or more, so that every
/// secret has exactly one spelling.
///
/// This is on the verify hot path, so it works on four 64-bit limbs and takes up to ten digits
/// per multiply (62^10 < 2^64) instead of one byte-wide long multiplication per digit.
fn decode_secret(s: &[u8]) -> Option<[u8; 32]> {
    const DIGITS_PER_STEP: usize = 10;
    // Little-endian limbs of the 256-bit value.
    let mut limbs = [0u64; 4];
    for chunk in s.chunks(DIGITS_PER_STEP) {
        let mut scale: u64 = 1;
        let mut value: u64 = 0;
        for &c in chunk {
            value = value * 62 + u64::from(digit_value(c)?);
            scale *= 62;
        }
        // limbs = limbs * scale + value, failing on overflow out of 256 bits.
        let mut carry = u128::from(value);
        for limb in limbs.iter_mut() {
            let cur = u128::from(*limb) * u128::from(scale) + carry;
            *limb = cur as u64;
            carry = cur >> 64;
        }
        if carry != 0 {
            return None;
        }
    }
    let mut out = [0u8; 32];
    for (i, limb) in limbs.iter().rev().enumerate() {
        out[i * 8..(i + 1) * 8].copy_from_slice(&limb.to_be_bytes());
    }
    Some(out)
}

fn encode_checksum(crc: u32) -> String {
    let mut n = crc;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lk() -> Prefix {
        Prefix::default()
    }

    fn sample() -> String {
        generate(&lk(), TokenKind::Pat)
            .unwrap()
            .plaintext
            .expose()
            .clone()
    }

    #[test]
    fn generated_token_has_the_documented_shape() {
        let t = sample();
        let parts: Vec<&str> = t.split('_').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "lk");
        assert_eq!(parts[1], "pat");
        assert_eq!(parts[2].len(), 36);
        assert_eq!(parts[3].len(), SECRET_LEN + CHECKSUM_LEN);
        assert!(parts[3].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn a_generated_token_parses_back_to_its_parts() {
        let g = generate(&lk(), TokenKind::Svc).unwrap();
        let p = parse(&lk(), g.plaintext.expose()).unwrap();
        assert_eq!(p.id, g.id);
        assert_eq!(p.kind, TokenKind::Svc);
        assert_eq!(p.secret.expose(), g.secret.expose());
        assert_eq!(p.id.get_version_num(), 7);
    }

    #[test]
    fn a_custom_prefix_is_used_and_required() {
        let ibex: Prefix = "ibex".parse().unwrap();
        let t = generate(&ibex, TokenKind::Pat).unwrap();
        assert!(t.plaintext.expose().starts_with("ibex_pat_"));
        assert!(parse(&ibex, t.plaintext.expose()).is_ok());
        assert_eq!(
            parse(&lk(), t.plaintext.expose()).unwrap_err(),
            InvalidToken
        );
    }

    #[test]
    fn bad_prefixes_are_refused_by_configuration() {
        for bad in ["", "Lk", "1lk", "lk_x", "abcdefghijklmnopq", "lk-x"] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad:?}");
        }
        assert!("a".parse::<Prefix>().is_ok());
        assert!("abcdefghijklmnop".parse::<Prefix>().is_ok());
    }

    #[test]
    fn every_malformed_shape_is_rejected() {
        let t = sample();
        let (body, checksum) = t.split_at(t.len() - CHECKSUM_LEN);
        let id = t.split('_').nth(2).unwrap().to_string();
        let tail = t.split('_').nth(3).unwrap().to_string();
        let cases: Vec<String> = vec![
            String::new(),
            "lk".into(),
            "lk_pat".into(),
            format!("{t}x"),
            t[..t.len() - 1].to_string(),
            format!("{body}"),
            format!("lk_bot_{id}_{tail}"),
            format!("lk_pat_{}_{tail}", id.to_uppercase()),
            format!("lk_pat_{}_{tail}", id.replace('-', "")),
            format!("lk_pat_{{{id}}}_{tail}"),
            format!("lk_pat_{id}_{tail}_x"),
            format!("lk_pat__{id}_{tail}"),
            t.replace('_', "-"),
            format!(" {t}"),
            format!("{t} "),
            format!(
                "{body}{}",
                if checksum == "000000" {
                    "000001"
                } else {
                    "000000"
                }
            ),
            t.replacen('l', "ł", 1),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        for c in cases {
            assert_eq!(parse(&lk(), &c).unwrap_err(), InvalidToken, "{c:?}");
        }
    }

    #[test]
    fn a_uuid_that_is_not_version_7_is_rejected_even_with_a_good_checksum() {
        let v4 = Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef);
        let t = format_token(&lk(), TokenKind::Pat, v4, &[7u8; 32]);
        assert_eq!(parse(&lk(), &t).unwrap_err(), InvalidToken);
    }

    #[test]
    fn a_secret_spelling_above_two_to_the_256_is_rejected() {
        // "z" * 43 is 62^43 - 1, which is more than 2^256 - 1.
        let id = Uuid::now_v7();
        let mut s = format!("lk_pat_{}_{}", id.hyphenated(), "z".repeat(SECRET_LEN));
        let crc = crc32fast::hash(s.as_bytes());
        s.push_str(&encode_checksum(crc));
        assert_eq!(parse(&lk(), &s).unwrap_err(), InvalidToken);
    }

    #[test]
    fn secret_encoding_is_fixed_width_for_the_extremes() {
        assert_eq!(base62_secret(&[0u8; 32]), "0".repeat(SECRET_LEN));
        let max = base62_secret(&[0xffu8; 32]);
        assert_eq!(max.len(), SECRET_LEN);
        assert_eq!(decode_secret(max.as_bytes()), Some([0xffu8; 32]));
        assert_eq!(encode_checksum(0), "000000");
        assert_eq!(encode_checksum(u32::MAX).len(), CHECKSUM_LEN);
    }

    #[test]
    fn redact_hides_token_shaped_words_and_keeps_the_rest() {
        let t = sample();
        let msg =
            format!("unknown variant `{t}`, expected one of `active`; value \"{t}\" at line 1");
        let r = redact(&msg);
        assert!(!r.contains(&t[8..]));
        assert_eq!(r.matches("[redacted]").count(), 2);
        assert!(r.contains("expected one of `active`"));
        assert_eq!(
            redact("name must be 1-100 characters"),
            "name must be 1-100 characters"
        );
    }

    #[test]
    fn a_non_base62_secret_character_is_rejected_even_with_a_good_checksum() {
        let id = Uuid::now_v7();
        let mut s = format!(
            "lk_pat_{}_{}-{}",
            id.hyphenated(),
            "A".repeat(21),
            "B".repeat(21)
        );
        s.push_str(&encode_checksum(crc32fast::hash(s.as_bytes())));
        assert_eq!(parse(&lk(), &s).unwrap_err(), InvalidToken);
    }

    #[test]
    fn a_version_7_uuid_with_a_foreign_variant_is_rejected_even_with_a_good_checksum() {
        // Variant bits 110 (Microsoft) instead of 10 (RFC 4122).
        let id = Uuid::parse_str("0192f3c4-1111-7222-c333-444455556666").unwrap();
        let t = format_token(&lk(), TokenKind::Pat, id, &[7u8; 32]);
        assert_eq!(parse(&lk(), &t).unwrap_err(), InvalidToken);
    }

    #[test]
    fn the_display_hint_shows_prefix_kind_and_eight_id_characters() {
        let id = Uuid::parse_str("0192f3c4-1111-7222-8333-444455556666").unwrap();
        assert_eq!(display_hint(&lk(), TokenKind::Pat, id), "lk_pat_0192f3c4…");
    }

    /// The straightforward byte-wide decoder the fast one must agree with.
    fn decode_secret_reference(s: &str) -> Option<[u8; 32]> {
        let mut n = [0u8; 32];
        for c in s.bytes() {
            let mut carry = digit_value(c)?;
            for byte in n.iter_mut().rev() {
                let cur = u32::from(*byte) * 62 + carry;
                *byte = (cur & 0xff) as u8;
                carry = cur >> 8;
            }
            if carry != 0 {
                return None;
            }
        }
        Some(n)
    }

    proptest! {
        #[test]
        fn generate_format_parse_round_trips(secret in any::<[u8; 32]>(), svc in any::<bool>(), ts in 0u64..(1u64 << 47)) {
            let kind = if svc { TokenKind::Svc } else { TokenKind::Pat };
            let id = uuid::Builder::from_unix_timestamp_millis(ts, &[9u8; 10]).into_uuid();
            let t = format_token(&lk(), kind, id, &secret);
            let p = parse(&lk(), &t).unwrap();
            prop_assert_eq!(p.id, id);
            prop_assert_eq!(p.kind, kind);
            prop_assert_eq!(p.secret.expose(), &secret);
        }

        #[test]
        fn any_single_character_change_is_rejected(secret in any::<[u8; 32]>(), pos in 0usize..200, repl in proptest::char::any()) {
            let id = Uuid::now_v7();
            let t = format_token(&lk(), TokenKind::Pat, id, &secret);
            let pos = pos % t.len();
            let original = t.as_bytes()[pos] as char;
            prop_assume!(repl != original);
            let mut changed: String = t.chars().take(pos).collect();
            changed.push(repl);
            changed.extend(t.chars().skip(pos + 1));
            prop_assert_eq!(parse(&lk(), &changed).unwrap_err(), InvalidToken);
        }

        #[test]
        fn the_limb_decoder_agrees_with_the_bytewise_one(s in "[0-9A-Za-z]{43}") {
            prop_assert_eq!(decode_secret(s.as_bytes()), decode_secret_reference(&s));
        }

        #[test]
        fn arbitrary_strings_never_panic_the_parser(s in ".{0,120}") {
            let _ = parse(&lk(), &s);
        }
    }

    // Property tests of the wire format. Each runs PROPTEST_CASES cases (256 by default;
    // bench/fuzz.sh runs them for minutes).

    fn any_prefix() -> impl Strategy<Value = Prefix> {
        "[a-z][a-z0-9]{0,15}".prop_map(|s| s.parse::<Prefix>().unwrap())
    }

    fn any_kind() -> impl Strategy<Value = TokenKind> {
        prop_oneof![Just(TokenKind::Pat), Just(TokenKind::Svc)]
    }

    /// Any UUID v7: every timestamp and every random bit.
    fn any_v7() -> impl Strategy<Value = Uuid> {
        (0u64..(1u64 << 48), any::<[u8; 10]>())
            .prop_map(|(ts, rand)| uuid::Builder::from_unix_timestamp_millis(ts, &rand).into_uuid())
    }

    fn any_token() -> impl Strategy<Value = (Prefix, TokenKind, Uuid, [u8; 32], String)> {
        (any_prefix(), any_kind(), any_v7(), any::<[u8; 32]>()).prop_map(
            |(prefix, kind, id, secret)| {
                let t = format_token(&prefix, kind, id, &secret);
                (prefix, kind, id, secret, t)
            },
        )
    }

    /// Appends the checksum a well-formed token would carry.
    fn with_checksum(body: String) -> String {
        let crc = crc32fast::hash(body.as_bytes());
        body + &encode_checksum(crc)
    }

    /// An id part that is sometimes canonical: a v7 id with some characters uppercased, any UUID
    /// (right version and variant one time in 64), or 36 characters of the id alphabet.
    fn id_part() -> impl Strategy<Value = String> {
        prop_oneof![
            (any_v7(), any::<u64>()).prop_map(|(id, upper)| {
                id.hyphenated()
                    .to_string()
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if upper >> (i % 64) & 1 == 1 && i % 7 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            }),
            any::<u128>().prop_map(|n| Uuid::from_u128(n).hyphenated().to_string()),
            "[0-9a-fA-F-]{36}",
        ]
    }

    proptest! {
        #[test]
        fn format_then_parse_gives_back_the_parts((prefix, kind, id, secret, t) in any_token()) {
            prop_assert!(t.len() <= MAX_TOKEN_LEN);
            let p = parse(&prefix, &t).unwrap();
            prop_assert_eq!(p.kind, kind);
            prop_assert_eq!(p.id, id);
            prop_assert_eq!(p.secret.expose(), &secret);
            // And the parts format back to the very same string.
            prop_assert_eq!(format_token(&prefix, p.kind, p.id, p.secret.expose()), t);
        }

        #[test]
        fn a_one_character_replacement_by_a_token_character_is_rejected(
            (prefix, _k, _i, _s, t) in any_token(),
            pos in any::<prop::sample::Index>(),
            repl in "[0-9A-Za-z_-]",
        ) {
            // Replacements from the token's own alphabet keep the grammar and the length, so
            // most of them reach the checksum.
            let pos = pos.index(t.len());
            let repl = repl.as_bytes()[0];
            prop_assume!(t.as_bytes()[pos] != repl);
            let mut b = t.into_bytes();
            b[pos] = repl;
            let changed = String::from_utf8(b).unwrap();
            prop_assert_eq!(parse(&prefix, &changed).unwrap_err(), InvalidToken);
        }

        #[test]
        fn any_one_character_replacement_insertion_or_deletion_is_rejected(
            (prefix, _k, _i, _s, t) in any_token(),
            pos in any::<prop::sample::Index>(),
            c in proptest::char::any(),
            edit in 0u8..3,
        ) {
            let mut chars: Vec<char> = t.chars().collect();
            let pos = pos.index(chars.len());
            match edit {
                0 => {
                    prop_assume!(chars[pos] != c);
                    chars[pos] = c;
                }
                1 => chars.insert(pos, c),
                _ => {
                    chars.remove(pos);
                }
            }
            let changed: String = chars.into_iter().collect();
            prop_assert_eq!(parse(&prefix, &changed).unwrap_err(), InvalidToken);
        }

        #[test]
        fn swapping_two_adjacent_characters_is_rejected(
            (prefix, _k, _i, _s, t) in any_token(),
            pos in any::<prop::sample::Index>(),
        ) {
            let mut b = t.into_bytes();
            let pos = pos.index(b.len() - 1);
            prop_assume!(b[pos] != b[pos + 1]);
            b.swap(pos, pos + 1);
            let changed = String::from_utf8(b).unwrap();
            prop_assert_eq!(parse(&prefix, &changed).unwrap_err(), InvalidToken);
        }

        /// A token with a right checksum parses exactly when each part is canonical (kind
        /// `pat`/`svc`, lowercase hyphenated UUID v7 of the RFC 4122 variant, a base62 secret
        /// below 2^256), and what parses formats back to the same string: one spelling per token.
        #[test]
        fn with_a_right_checksum_only_canonical_parts_parse(
            kind in prop_oneof![Just("pat".to_string()), Just("svc".to_string()), "[a-zA-Z]{3}"],
            id in id_part(),
            secret in prop_oneof![
                "[0-9A-Za-z]{43}",
                "[0-9A-Za-z]{0,3}[0-9A-Za-z]{40}",
                "[0-9A-Z]{43}",
                "[0-9A-Za-z]{42}[^0-9A-Za-z]",
            ],
        ) {
            let t = with_checksum(format!("lk_{kind}_{id}_{secret}"));
            let canonical_id = Uuid::try_parse(&id).ok().filter(|u| {
                u.hyphenated().to_string() == id
                    && u.get_version_num() == 7
                    && u.get_variant() == uuid::Variant::RFC4122
            });
            let canonical = TokenKind::from_name(&kind).is_some()
                && canonical_id.is_some()
                && secret.len() == SECRET_LEN
                && decode_secret_reference(&secret).is_some();
            match parse(&lk(), &t) {
                Ok(p) => {
                    prop_assert!(canonical, "{t:?} parsed but is not canonical");
                    prop_assert_eq!(format_token(&lk(), p.kind, p.id, p.secret.expose()), t);
                }
                Err(InvalidToken) => prop_assert!(!canonical, "{t:?} is canonical but was rejected"),
            }
        }

        #[test]
        fn arbitrary_strings_never_panic_the_parser_with_any_prefix(
            prefix in any_prefix(),
            s in prop_oneof![".{0,200}", "[a-z0-9_-]{0,130}", "[\\x00-\\x7f]{60,130}"],
        ) {
            let _ = parse(&prefix, &s);
        }

        #[test]
        fn prefixes_are_exactly_the_documented_pattern(s in prop_oneof![".{0,20}", "[a-z0-9_A-]{0,18}"]) {
            let b = s.as_bytes();
            let expected = (1..=16).contains(&b.len())
                && b[0].is_ascii_lowercase()
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            match s.parse::<Prefix>() {
                Ok(p) => {
                    prop_assert!(expected, "{s:?} accepted");
                    prop_assert_eq!(p.to_string(), s);
                }
                Err(_) => prop_assert!(!expected, "{s:?} refused"),
            }
        }

        #[test]
        fn redact_hides_every_embedded_token(
            (_p, _k, _i, _s, t) in any_token(),
            before in "[^_]{0,40}",
            after in "[^_]{0,40}",
            sep in prop_oneof![Just(" "), Just("\""), Just("`"), Just(","), Just("\n"), Just("'")],
        ) {
            let text = format!("{before}{sep}{t}{sep}{after}");
            let r = redact(&text);
            prop_assert!(!r.contains(&t[t.len() - CHECKSUM_LEN - SECRET_LEN..]), "{r:?}");
            prop_assert!(r.contains("[redacted]"));
        }

        #[test]
        fn redact_never_panics_and_keeps_text_without_token_words(s in ".{0,200}") {
            let r = redact(&s);
            let long_word = s
                .split(|c: char| c.is_whitespace() || "\"`',()[]{}".contains(c))
                .any(|w| w.chars().count() >= 40);
            if !s.contains("_pat_") && !s.contains("_svc_") && !long_word {
                prop_assert_eq!(r, s);
            }
        }

        #[test]
        fn redact_hides_every_long_word_such_as_an_imported_key(word in "[A-Za-z0-9_|.-]{40,80}") {
            let r = redact(&format!("invalid type: string \"{word}\", expected a sequence"));
            prop_assert!(!r.contains(&word), "{}", r);
        }

        #[test]
        fn base62_secrets_decode_back(secret in any::<[u8; 32]>()) {
            let s = base62_secret(&secret);
            prop_assert_eq!(s.len(), SECRET_LEN);
            prop_assert_eq!(decode_secret(s.as_bytes()), Some(secret));
        }

        #[test]
        fn display_hint_never_panics(prefix in any_prefix(), kind in any_kind(), id in any::<u128>()) {
            let h = display_hint(&prefix, kind, Uuid::from_u128(id));
            prop_assert!(h.starts_with(prefix.as_str()));
        }
    }
}
