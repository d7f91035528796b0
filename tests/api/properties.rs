//! Property tests of what clients send: JSON bodies and query strings at the type level, and, over
//! real HTTP against one server per test, arbitrary bodies, paging cursors and gateway scope lists.
//!
//! The type-level properties run `PROPTEST_CASES` cases (256 by default). The HTTP ones run
//! `LATCHKEY_HTTP_PROPTEST_CASES` (48 by default), as every case is a request. `bench/fuzz.sh`
//! raises both.

use latchkey::service::model::{
    ChangePasswordRequest, CreateOrgRequest, CreateTokenRequest, CreateUserRequest, Email,
    ExchangePasswordRequest, LeakedReport, ListAuditRequest, ListTokensRequest, ListUsersRequest,
    Name, OrgScope, RotateTokenRequest, SetupPasswordRequest, SignInRequest, UpdateOrgRequest,
    UpdateUserRequest, UsageQuery, VerifyRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use crate::helpers::spawn_app;

/// Every field name of the request bodies, so generated objects often have the right keys.
const FIELDS: [&str; 24] = [
    "org_id",
    "name",
    "type",
    "permissions",
    "scopes",
    "expires_at",
    "ttl_seconds",
    "metadata",
    "grace_seconds",
    "max_ttl_seconds",
    "default_ttl_seconds",
    "token",
    "required_scopes",
    "tokens",
    "source",
    "email",
    "role",
    "current_password",
    "new_password",
    "setup_token",
    "password",
    "expires_in_days",
    "page_size",
    "page_token",
];

/// Strings that mean something to some field, and strings that mean nothing.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ".{0,24}",
        1 => Just("pat".to_string()),
        1 => Just("svc".to_string()),
        1 => Just("admin".to_string()),
        1 => Just("tokens:read".to_string()),
        1 => Just("a@b".to_string()),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => Just(Uuid::now_v7().to_string()),
        1 => (0i64..5_000_000_000).prop_map(|s| {
            chrono::DateTime::from_timestamp(s, 0).unwrap_or_default().to_rfc3339()
        }),
        1 => Just("+275760-09-13T00:00:00Z".to_string()),
        1 => "[A-Za-z0-9 ._:-]{1,110}",
    ]
}

fn any_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        (-3i64..5).prop_map(Number::from),
        Just(Number::from(i64::MAX)),
        Just(Number::from(i64::MIN)),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
    ]
}

/// Any JSON value, a few levels deep, with object keys mostly taken from [`FIELDS`].
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any_number().prop_map(Value::Number),
        any_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(&FIELDS[..]).prop_map(str::to_string),
            1 => ".{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object whose keys are all field names, with any values: the shape of a request body.
fn shaped_json() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(&FIELDS[..]), any_json(), 0..6).prop_map(|m| {
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

/// Bytes a client may send as a body: JSON text, JSON cut short or spliced, nesting deeper than
/// any parser should follow, or noise.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        3 => shaped_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (any_json(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let b = serde_json::to_vec(&v).unwrap();
            b[..i.index(b.len() + 1)].to_vec()
        }),
        1 => (1usize..3000, prop::bool::ANY).prop_map(|(depth, obj)| {
            let (open, close) = if obj { ("{\"metadata\":", "}") } else { ("[", "]") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => "[ -~\\n]{0,120}".prop_map(String::into_bytes),
    ]
}

/// Deserializes `body` as the JSON extractor does (and once more with the path tracking it uses
/// for its error message); only a panic fails.
fn parse_as<T: DeserializeOwned>(body: &[u8]) {
    let _ = serde_json::from_slice::<T>(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = serde_path_to_error::deserialize::<_, T>(&mut de);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let _ = serde_json::from_value::<T>(v);
    }
}

fn parse_as_every_body(body: &[u8]) {
    parse_as::<CreateTokenRequest>(body);
    parse_as::<RotateTokenRequest>(body);
    parse_as::<UpdateOrgRequest>(body);
    parse_as::<VerifyRequest>(body);
    parse_as::<CreateOrgRequest>(body);
    parse_as::<LeakedReport>(body);
    parse_as::<CreateUserRequest>(body);
    parse_as::<UpdateUserRequest>(body);
    parse_as::<ChangePasswordRequest>(body);
    parse_as::<SetupPasswordRequest>(body);
    parse_as::<ExchangePasswordRequest>(body);
    parse_as::<SignInRequest>(body);
}

/// A query string from field names and values, `&`-joined and percent-encoded, or raw noise.
fn any_query() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(
            (
                prop_oneof![
                    4 => prop::sample::select(&FIELDS[..]).prop_map(str::to_string),
                    1 => Just("state".to_string()),
                    1 => Just("days".to_string()),
                    1 => ".{0,6}",
                ],
                prop_oneof![any_string(), any_number().prop_map(|n| n.to_string())],
            ),
            0..5,
        )
        .prop_map(|kv| serde_urlencoded::to_string(kv).unwrap()),
        1 => "[ -~]{0,80}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_json_never_panics_a_request_type(body in any_body()) {
        parse_as_every_body(&body);
    }

    #[test]
    fn arbitrary_query_strings_never_panic_a_query_type(q in any_query()) {
        let _ = serde_urlencoded::from_str::<ListTokensRequest>(&q);
        let _ = serde_urlencoded::from_str::<ListAuditRequest>(&q);
        let _ = serde_urlencoded::from_str::<ListUsersRequest>(&q);
        let _ = serde_urlencoded::from_str::<UsageQuery>(&q);
        let _ = serde_urlencoded::from_str::<OrgScope>(&q);
    }

    #[test]
    fn names_and_emails_are_checked_without_panicking(s in prop_oneof![".{0,120}", any_string()]) {
        let ok = !s.is_empty()
            && s.chars().count() <= 100
            && s.chars().all(|c| c.is_ascii_alphanumeric() || " ._:-".contains(c));
        prop_assert_eq!(Name::parse("name", s.clone()).is_ok(), ok);
        if let Ok(e) = Email::parse(s.clone()) {
            prop_assert_eq!(e.as_str().matches('@').count(), 1);
        }
    }

    #[test]
    fn a_well_typed_verify_body_means_what_it_says(token in ".{0,100}", scopes in prop::collection::vec(".{0,20}", 0..4)) {
        let body = serde_json::json!({ "token": token, "required_scopes": scopes });
        let req: VerifyRequest = serde_json::from_value(body).unwrap();
        prop_assert_eq!(req.token, token);
        prop_assert_eq!(req.required_scopes, scopes);
    }
}

/// Cases of each HTTP property: `LATCHKEY_HTTP_PROPTEST_CASES`, else 48.
fn http_runner() -> TestRunner {
    let cases = std::env::var("LATCHKEY_HTTP_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs `check` over `strategy` with a server of its own, on a runtime of the test's own (the
/// proptest runner is synchronous).
fn with_app<S, F>(strategy: S, check: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(
        &tokio::runtime::Runtime,
        &crate::helpers::TestApp,
        S::Value,
    ) -> Result<(), TestCaseError>,
{
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_app());
    let result = http_runner().run(&strategy, |value| check(&rt, &app, value));
    drop(app);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The status and JSON body (or null) of a response.
async fn answer(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[test]
fn a_malformed_page_token_is_invalid_argument_never_a_server_error() {
    let token = prop_oneof![
        3 => ".{0,60}",
        2 => "[0-9a-fA-F-]{30,40}",
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).simple().to_string()),
        1 => Just(String::new()),
    ];
    let size = prop_oneof![
        Just(None),
        any::<u32>().prop_map(|n| Some(n.to_string())),
        "-?[0-9]{1,12}".prop_map(Some),
        ".{0,6}".prop_map(Some),
    ];
    let path = prop::sample::select(vec!["/v1/tokens", "/v1/audit", "/v1/users"]);
    with_app((token, size, path), |rt, app, (token, size, path)| {
        let mut query = vec![("page_token", token.clone())];
        if let Some(s) = &size {
            query.push(("page_size", s.clone()));
        }
        let (status, body) = rt.block_on(async {
            answer(
                app.client
                    .get(format!(
                        "{}{path}?{}",
                        app.address,
                        serde_urlencoded::to_string(&query).unwrap()
                    ))
                    .bearer_auth(&app.admin_token)
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        });
        let size_ok = size.as_deref().is_none_or(|s| s.parse::<u32>().is_ok());
        if Uuid::try_parse(&token).is_ok() && size_ok {
            prop_assert_eq!(status, StatusCode::OK, "{}", body);
        } else {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", body);
            prop_assert_eq!(&body["error"]["code"], "invalid_argument");
        }
        Ok(())
    });
}

#[test]
fn arbitrary_bodies_never_cause_a_server_error() {
    // Bodies go to every endpoint that reads one. Ids in paths are random (so nothing of the
    // admin's is rotated or disabled), except the org's own policy, whose rules must hold too.
    let target = prop_oneof![
        Just((Method::POST, "/v1/tokens".to_string())),
        Just((Method::POST, "/v1/tokens/verify".to_string())),
        Just((Method::POST, "/v1/tokens/leaked".to_string())),
        Just((Method::POST, "/v1/orgs".to_string())),
        Just((Method::POST, "/v1/users".to_string())),
        Just((Method::PATCH, "/v1/orgs/{org}".to_string())),
        Just((Method::PATCH, format!("/v1/users/{}", Uuid::now_v7()))),
        Just((
            Method::POST,
            format!("/v1/tokens/{}/rotate", Uuid::now_v7())
        )),
        Just((Method::POST, "/v1/auth/setup".to_string())),
        Just((Method::POST, "/v1/users/me/password".to_string())),
    ];
    with_app((target, any_body()), |rt, app, ((method, path), body)| {
        let path = path.replace("{org}", &app.org_id.to_string());
        let (status, answer) = rt.block_on(async {
            answer(
                app.client
                    .request(method.clone(), format!("{}{path}", app.address))
                    .bearer_auth(&app.admin_token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        });
        prop_assert!(
            !status.is_server_error(),
            "{method} {path} {:?}: {status} {answer}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            prop_assert!(answer["error"]["code"].is_string(), "{status} {answer}");
        }
        Ok(())
    });
}

#[test]
fn arbitrary_sign_in_bodies_never_cause_a_server_error() {
    // Unauthenticated endpoints, with bodies that seldom reach a password check.
    let path = prop::sample::select(vec!["/v1/auth/token", "/v1/auth/session"]);
    let body = prop_oneof![
        any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..100),
    ];
    with_app((path, body), |rt, app, (path, body)| {
        let (status, answer) = rt.block_on(async {
            answer(
                app.client
                    .post(format!("{}{path}", app.address))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        });
        prop_assert!(!status.is_server_error(), "{path}: {status} {answer}");
        Ok(())
    });
}

#[test]
fn arbitrary_gateway_scope_lists_never_cause_a_server_error() {
    let require = prop_oneof![
        ".{0,60}",
        prop::collection::vec(
            prop_oneof![
                Just("tokens:read".to_string()),
                Just(" platform:admin ".to_string()),
                Just(String::new()),
                "[a-z:]{1,12}",
            ],
            0..5
        )
        .prop_map(|v| v.join(",")),
    ];
    with_app(require, |rt, app, require| {
        let (status, answer) = rt.block_on(async {
            answer(
                app.client
                    .get(format!(
                        "{}/v1/auth/check?{}",
                        app.address,
                        serde_urlencoded::to_string([("require", &require)]).unwrap()
                    ))
                    .bearer_auth(&app.admin_token)
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        });
        prop_assert!(
            [
                StatusCode::NO_CONTENT,
                StatusCode::BAD_REQUEST,
                StatusCode::FORBIDDEN
            ]
            .contains(&status),
            "{require:?}: {status} {answer}"
        );
        Ok(())
    });
}
