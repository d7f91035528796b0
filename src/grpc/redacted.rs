//! Hand-written `Debug` for the protobuf messages that carry a plaintext secret: a password, a
//! token or a setup token (and the setup link that holds it), Latchkey's and ibex's. `build.rs` tells prost to derive no
//! `Debug` for them (`skip_debug`); these print every other field as prost would and
//! `[redacted]` for the secret ones, so a logged request or response shows no secret.
//!
//! A message that gains a secret field must be added to `build.rs`'s list and here; the
//! `every_secret_field_is_covered` test reads the descriptors and fails until it is.

use std::fmt;
use std::marker::PhantomData;

use super::envoy::pb::envoy::service::auth::v3::attribute_context::HttpRequest as EnvoyHttpRequest;
use super::ibex::pb as ibex;
use super::pb;

/// Printed in place of a secret.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An enumeration field as prost's derived `Debug` prints it: the variant's name, or the raw
/// number when it is not a known value.
struct Enum<E>(i32, PhantomData<E>);

fn enumeration<E>(value: i32) -> Enum<E> {
    Enum(value, PhantomData)
}

impl<E: TryFrom<i32> + fmt::Debug> fmt::Debug for Enum<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match E::try_from(self.0) {
            Ok(known) => known.fmt(f),
            Err(_) => self.0.fmt(f),
        }
    }
}

impl fmt::Debug for pb::CreateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &self.token)
            .field("plaintext", &Redacted)
            .finish()
    }
}

impl fmt::Debug for pb::RotateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateTokenResponse")
            .field("token", &self.token)
            .field("plaintext", &Redacted)
            .field("previous", &self.previous)
            .finish()
    }
}

impl fmt::Debug for pb::ValidateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateTokenRequest")
            .field("token", &Redacted)
            .field("required_scopes", &self.required_scopes)
            .finish()
    }
}

impl fmt::Debug for pb::ExchangePasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangePasswordRequest")
            .field("email", &self.email)
            .field("password", &Redacted)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("permissions", &self.permissions)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("expires_in_days", &self.expires_in_days)
            .field("r#type", &enumeration::<pb::TokenType>(self.r#type))
            .finish()
    }
}

impl fmt::Debug for pb::SetupPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetupPasswordRequest")
            .field("setup_token", &Redacted)
            .field("password", &Redacted)
            .finish()
    }
}

impl fmt::Debug for pb::CreateUserResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateUserResponse")
            .field("user", &self.user)
            // The link holds the setup token.
            .field("setup_url", &Redacted)
            .field("setup_token", &Redacted)
            .field("setup_expires_at", &self.setup_expires_at)
            .finish()
    }
}

impl fmt::Debug for pb::ChangePasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangePasswordRequest")
            .field("current_password", &Redacted)
            .field("new_password", &Redacted)
            .finish()
    }
}

impl fmt::Debug for ibex::CreateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token_id", &self.token_id)
            .field("plaintext", &Redacted)
            .field("prefix", &self.prefix)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl fmt::Debug for ibex::ValidateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateTokenRequest")
            .field("access_token", &Redacted)
            .finish()
    }
}

/// The request Envoy checks: its headers carry the bearer (and may carry other credentials), its
/// path and body may too. Header names are printed, values are not.
impl fmt::Debug for EnvoyHttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        let raw_names: Option<Vec<&str>> = self
            .header_map
            .as_ref()
            .map(|m| m.headers.iter().map(|h| h.key.as_str()).collect());
        f.debug_struct("HttpRequest")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("header_names", &names)
            .field("header_map_names", &raw_names)
            .field("path", &Redacted)
            .field("host", &self.host)
            .field("scheme", &self.scheme)
            .field("query", &Redacted)
            .field("fragment", &Redacted)
            .field("size", &self.size)
            .field("protocol", &self.protocol)
            .field("body", &Redacted)
            .field("raw_body", &Redacted)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;
    use prost_types::field_descriptor_proto::Type;
    use prost_types::{DescriptorProto, FileDescriptorSet, Timestamp};

    use super::*;

    const TOKEN_SECRET: &str = "lk_pat_SECRETsecretSECRETsecret0001";
    const OTHER_SECRET: &str = "lk_svc_SECRETsecretSECRETsecret0002";
    const PASSWORD: &str = "hunter2-correct-horse";
    const NEW_PASSWORD: &str = "battery-staple-NEW-pw";
    const SETUP_TOKEN: &str = "setupTOKENsetupTOKEN0003";

    /// Both the compact and the pretty form, which must agree on what they hide.
    fn both(value: &impl fmt::Debug) -> [String; 2] {
        [format!("{value:?}"), format!("{value:#?}")]
    }

    fn assert_hides(value: &impl fmt::Debug, secrets: &[&str], shown: &[&str]) {
        for out in both(value) {
            for secret in secrets {
                assert!(!out.contains(secret), "{secret:?} leaked in {out}");
            }
            for text in shown {
                assert!(out.contains(text), "{text:?} missing from {out}");
            }
            assert!(out.contains("[redacted]"), "no [redacted] in {out}");
        }
    }

    fn token(id: &str) -> pb::Token {
        pb::Token {
            id: id.into(),
            name: "ci-deploy".into(),
            display_hint: "lk_pat_…0001".into(),
            r#type: pb::TokenType::Pat as i32,
            ..Default::default()
        }
    }

    #[test]
    fn create_token_response_hides_the_plaintext() {
        let msg = pb::CreateTokenResponse {
            token: Some(token("tok-1")),
            plaintext: TOKEN_SECRET.into(),
        };
        assert_hides(&msg, &[TOKEN_SECRET], &["tok-1", "ci-deploy", "Pat"]);
    }

    #[test]
    fn rotate_token_response_hides_the_plaintext() {
        let msg = pb::RotateTokenResponse {
            token: Some(token("tok-new")),
            plaintext: OTHER_SECRET.into(),
            previous: Some(token("tok-old")),
        };
        assert_hides(&msg, &[OTHER_SECRET], &["tok-new", "tok-old"]);
    }

    #[test]
    fn validate_token_request_hides_the_token() {
        let msg = pb::ValidateTokenRequest {
            token: TOKEN_SECRET.into(),
            required_scopes: vec!["tokens:read".into()],
        };
        assert_hides(&msg, &[TOKEN_SECRET], &["tokens:read"]);
    }

    #[test]
    fn exchange_password_request_hides_the_password() {
        let msg = pb::ExchangePasswordRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            name: "laptop".into(),
            scopes: vec!["tokens:read".into()],
            permissions: 3,
            ttl_seconds: Some(3600),
            expires_in_days: None,
            r#type: pb::TokenType::Svc as i32,
        };
        assert_hides(
            &msg,
            &[PASSWORD],
            &["ada@example.com", "laptop", "tokens:read", "3600", "Svc"],
        );
    }

    #[test]
    fn exchange_password_request_prints_an_unknown_type_as_its_number() {
        let msg = pb::ExchangePasswordRequest {
            password: PASSWORD.into(),
            r#type: 77,
            ..Default::default()
        };
        assert_hides(&msg, &[PASSWORD], &["r#type: 77"]);
    }

    #[test]
    fn setup_password_request_hides_the_token_and_the_password() {
        let msg = pb::SetupPasswordRequest {
            setup_token: SETUP_TOKEN.into(),
            password: PASSWORD.into(),
        };
        assert_hides(&msg, &[SETUP_TOKEN, PASSWORD], &["SetupPasswordRequest"]);
    }

    #[test]
    fn create_user_response_hides_the_setup_token_and_link() {
        let url = format!("https://latchkey.example/setup#{SETUP_TOKEN}");
        let msg = pb::CreateUserResponse {
            user: Some(pb::User {
                id: "user-1".into(),
                email: "grace@example.com".into(),
                ..Default::default()
            }),
            setup_url: url.clone(),
            setup_token: SETUP_TOKEN.into(),
            setup_expires_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        };
        assert_hides(
            &msg,
            &[SETUP_TOKEN, &url, "latchkey.example/setup"],
            &["user-1", "grace@example.com", "1700000000"],
        );
    }

    #[test]
    fn change_password_request_hides_both_passwords() {
        let msg = pb::ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        };
        assert_hides(
            &msg,
            &[PASSWORD, NEW_PASSWORD],
            &["current_password", "new_password"],
        );
    }

    #[test]
    fn ibex_create_token_response_hides_the_plaintext() {
        let msg = ibex::CreateTokenResponse {
            token_id: "tok-1".into(),
            plaintext: TOKEN_SECRET.into(),
            prefix: "lk_pat_0192f3c4".into(),
            created_at: None,
        };
        assert_hides(&msg, &[TOKEN_SECRET], &["tok-1", "lk_pat_0192f3c4"]);
    }

    #[test]
    fn ibex_validate_token_request_hides_the_token() {
        let msg = ibex::ValidateTokenRequest {
            access_token: TOKEN_SECRET.into(),
        };
        assert_hides(&msg, &[TOKEN_SECRET], &["access_token"]);
    }

    #[test]
    fn the_request_envoy_checks_hides_header_values_path_and_body() {
        let msg = EnvoyHttpRequest {
            method: "GET".into(),
            headers: [(
                "authorization".to_string(),
                format!("Bearer {TOKEN_SECRET}"),
            )]
            .into(),
            header_map: Some(
                super::super::envoy::pb::envoy::config::core::v3::HeaderMap {
                    headers: vec![
                        super::super::envoy::pb::envoy::config::core::v3::HeaderValue {
                            key: "cookie".into(),
                            value: String::new(),
                            raw_value: SETUP_TOKEN.as_bytes().to_vec(),
                        },
                    ],
                },
            ),
            path: format!("/reports?api_key={OTHER_SECRET}"),
            body: PASSWORD.into(),
            host: "api.example".into(),
            ..Default::default()
        };
        assert_hides(
            &msg,
            &[TOKEN_SECRET, OTHER_SECRET, PASSWORD, SETUP_TOKEN, "Bearer"],
            &["authorization", "cookie", "GET", "api.example"],
        );
    }

    /// String fields that hold a secret, by name.
    const SECRET_FIELDS: &[&str] = &[
        "access_token",
        "password",
        "current_password",
        "new_password",
        "setup_token",
        "setup_url",
        "plaintext",
        "token",
    ];

    /// The messages this file covers (and `build.rs` lists for `skip_debug`).
    const COVERED: &[&str] = &[
        "ChangePasswordRequest",
        "CreateTokenResponse",
        "CreateUserResponse",
        "ExchangePasswordRequest",
        "RotateTokenResponse",
        "SetupPasswordRequest",
        "ValidateTokenRequest",
    ];

    /// Adds `msg` (and any message nested in it) to `found` if it has a secret string field.
    fn collect(msg: &DescriptorProto, prefix: &str, found: &mut BTreeSet<String>) {
        let name = format!("{prefix}{}", msg.name());
        let secret = msg
            .field
            .iter()
            .any(|field| field.r#type() == Type::String && SECRET_FIELDS.contains(&field.name()));
        if secret {
            found.insert(name.clone());
        }
        for nested in &msg.nested_type {
            collect(nested, &format!("{name}."), found);
        }
    }

    /// The ibex messages this file covers (and `build.rs` lists for `skip_debug`).
    const COVERED_IBEX: &[&str] = &["CreateTokenResponse", "ValidateTokenRequest"];

    /// The messages of `package` in `descriptor_set` that have a secret string field.
    fn with_secrets(descriptor_set: &[u8], package: &str) -> BTreeSet<String> {
        let fds = FileDescriptorSet::decode(descriptor_set).unwrap();
        let mut found = BTreeSet::new();
        for file in fds.file.iter().filter(|f| f.package() == package) {
            for msg in &file.message_type {
                collect(msg, "", &mut found);
            }
        }
        found
    }

    #[test]
    fn every_secret_field_is_covered() {
        let found = with_secrets(super::super::FILE_DESCRIPTOR_SET, "latchkey.auth.v1");
        let covered: BTreeSet<String> = COVERED.iter().map(|s| s.to_string()).collect();
        assert_eq!(found, covered, "update build.rs and src/grpc/redacted.rs");
    }

    #[test]
    fn every_secret_field_of_the_ibex_api_is_covered() {
        let found = with_secrets(super::super::ibex::FILE_DESCRIPTOR_SET, "ibex.auth.v1");
        let covered: BTreeSet<String> = COVERED_IBEX.iter().map(|s| s.to_string()).collect();
        assert_eq!(found, covered, "update build.rs and src/grpc/redacted.rs");
    }
}
