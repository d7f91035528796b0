//! Envoy's external authorization, `envoy.service.auth.v3.Authorization/Check`, on the real
//! binary through a tonic client generated from the same protos: each CheckRequest is built the
//! way Envoy's ext_authz filter builds it (lower-case headers of the checked request, the client
//! as `source`, the route's `context_extensions`). No Envoy runs here (none could be installed);
//! `examples/envoy/envoy.yaml` is read and checked against what the server serves.

use std::collections::HashMap;

use latchkey::grpc::envoy::pb::envoy::config::core::v3 as core3;
use latchkey::grpc::envoy::pb::envoy::service::auth::v3 as authz;
use latchkey::grpc::envoy::{FILE_DESCRIPTOR_SET, REQUIRE, SERVICE_NAME};
use prost::Message;
use prost_types::FileDescriptorSet;
use reqwest::StatusCode;
use serde_json::Value;
use tonic::Code;
use tonic::codegen::tokio_stream;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use yaml_rust2::{Yaml, YamlLoader};

use authz::authorization_client::AuthorizationClient;
use authz::check_response::HttpResponse;

use crate::helpers::{TestApp, forge, spawn_app, spawn_app_with};

async fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connect")
}

async fn client(app: &TestApp) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(channel(app).await)
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// A CheckRequest as Envoy sends it for `GET /runs/42` from `source`, with `headers` (names
/// lower-case, as Envoy sends them) and the route's `require` context extension, if any.
fn check_request(
    source: &str,
    headers: &[(&str, String)],
    require: Option<&str>,
) -> authz::CheckRequest {
    use authz::attribute_context::{HttpRequest, Peer, Request};
    let mut all: HashMap<String, String> = [
        (":authority", "api.example"),
        (":method", "GET"),
        (":path", "/runs/42"),
        ("user-agent", "curl/8.5.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.clone())));
    authz::CheckRequest {
        attributes: Some(authz::AttributeContext {
            source: Some(Peer {
                address: Some(core3::Address {
                    address: Some(core3::address::Address::SocketAddress(
                        core3::SocketAddress {
                            address: source.into(),
                            port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(
                                52_000,
                            )),
                            ..Default::default()
                        },
                    )),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "7c1f0a".into(),
                    method: "GET".into(),
                    headers: all,
                    path: "/runs/42".into(),
                    host: "api.example".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    size: -1,
                    ..Default::default()
                }),
            }),
            context_extensions: require
                .map(|r| (REQUIRE.to_string(), r.to_string()))
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}

const CLIENT: &str = "198.51.100.7";

async fn check(app: &TestApp, req: authz::CheckRequest) -> authz::CheckResponse {
    client(app)
        .await
        .check(req)
        .await
        .expect("Check answers gRPC OK")
        .into_inner()
}

/// An allowed request as Envoy applies it.
struct Allowed {
    /// Set on the upstream request.
    headers: HashMap<String, String>,
    /// `append` of each header set (Envoy replaces with `Some(false)`).
    appends: Vec<Option<bool>>,
    removed: Vec<String>,
}

#[allow(deprecated)] // `append`: deprecated in Envoy's API, and what Latchkey sets.
fn allowed(r: authz::CheckResponse) -> Allowed {
    assert_eq!(r.status.as_ref().map(|s| s.code), Some(0), "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("no ok_response: {r:?}");
    };
    Allowed {
        headers: ok
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect(),
        appends: ok.headers.iter().map(|h| h.append).collect(),
        removed: ok.headers_to_remove,
    }
}

/// A denial as Envoy answers it to the client.
struct Denied {
    code: i32,
    http: i32,
    headers: HashMap<String, String>,
    body: Value,
}

fn denied(r: authz::CheckResponse) -> Denied {
    let code = r.status.as_ref().map(|s| s.code).unwrap_or_default();
    let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("no denied_response: {r:?}");
    };
    Denied {
        code,
        http: d.status.map(|s| s.code).unwrap_or_default(),
        headers: d
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect(),
        body: serde_json::from_str(&d.body).expect("a JSON body"),
    }
}

#[tokio::test]
async fn a_valid_token_goes_upstream_with_its_identity_headers_and_without_the_key_or_forged_headers()
 {
    // Arrange
    let app = spawn_app().await;
    let (t, view) = app
        .token_with(&app.admin_token, "envoy", &["tokens:read", "audit:read"])
        .await;
    let req = check_request(
        CLIENT,
        &[
            bearer(&t),
            ("x-latchkey-token-id", "forged".into()),
            ("x-latchkey-user", "forged".into()),
        ],
        None,
    );

    // Act
    let ok = allowed(check(&app, req).await);

    // Assert
    assert_eq!(
        ok.headers["x-latchkey-token-id"],
        view["id"].as_str().unwrap()
    );
    assert_eq!(ok.headers["x-latchkey-org-id"], app.org_id.to_string());
    assert_eq!(ok.headers["x-latchkey-scopes"], "tokens:read,audit:read");
    assert_eq!(ok.headers.len(), 3);
    assert!(
        ok.appends.iter().all(|a| *a == Some(false)),
        "each header replaces the client's: {:?}",
        ok.appends
    );
    assert_eq!(ok.removed, ["authorization", "x-latchkey-user"]);
}

#[tokio::test]
async fn a_bearer_in_raw_headers_is_read_as_envoy_sends_it_with_encode_raw_headers() {
    // Arrange
    let app = spawn_app().await;
    let (t, view) = app.token_with(&app.admin_token, "raw", &[]).await;
    let mut req = check_request(CLIENT, &[], None);
    let http = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers.clear();
    http.header_map = Some(core3::HeaderMap {
        headers: vec![core3::HeaderValue {
            key: "authorization".into(),
            value: String::new(),
            raw_value: format!("Bearer {t}").into_bytes(),
        }],
    });

    // Act
    let ok = allowed(check(&app, req).await);

    // Assert
    assert_eq!(
        ok.headers["x-latchkey-token-id"],
        view["id"].as_str().unwrap()
    );
    assert_eq!(ok.headers["x-latchkey-scopes"], "");
}

#[tokio::test]
async fn no_key_garbage_a_wrong_secret_and_a_revoked_token_are_denied_401_with_www_authenticate() {
    // Arrange
    let app = spawn_app().await;
    let (genuine, _) = app.token_with(&app.admin_token, "genuine", &[]).await;
    let (revoked, view) = app.token_with(&app.admin_token, "revoked", &[]).await;
    let res = app
        .delete(
            &format!("/v1/tokens/{}", view["id"].as_str().unwrap()),
            &app.admin_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![bearer("garbage")],
        vec![("authorization", format!("Basic {genuine}"))],
        vec![bearer(&forge(&genuine, None, Some([7u8; 32])))],
        vec![bearer(&revoked)],
    ];

    // Act
    let mut answers = Vec::new();
    for headers in &cases {
        answers.push(denied(
            check(&app, check_request(CLIENT, headers, None)).await,
        ));
    }

    // Assert
    for (i, d) in answers.iter().enumerate() {
        assert_eq!(d.code, Code::Unauthenticated as i32, "case {i}");
        assert_eq!(d.http, 401, "case {i}");
        assert_eq!(d.headers["www-authenticate"], "Bearer", "case {i}");
        assert_eq!(d.headers["content-type"], "application/json", "case {i}");
        assert_eq!(
            d.body, answers[0].body,
            "one answer for every kind, case {i}"
        );
    }
    assert_eq!(answers[0].body["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn a_token_lacking_a_required_scope_is_denied_403_and_one_holding_every_scope_goes_upstream()
{
    // Arrange
    let app = spawn_app().await;
    let (reader, _) = app
        .token_with(&app.admin_token, "reader", &["tokens:read"])
        .await;
    let (auditor, _) = app
        .token_with(&app.admin_token, "auditor", &["tokens:read", "audit:read"])
        .await;
    let ask = |t: &str, require: &str| check_request(CLIENT, &[bearer(t)], Some(require));

    // Act
    let lacking = check(&app, ask(&reader, "tokens:read, audit:read")).await;
    let unknown = check(&app, ask(&auditor, "no:such")).await;
    let held = check(&app, ask(&reader, "tokens:read")).await;
    let every = check(&app, ask(&auditor, "tokens:read,audit:read")).await;
    let nothing_required = check(&app, ask(&reader, "")).await;

    // Assert
    let lacking = denied(lacking);
    assert_eq!(lacking.code, Code::PermissionDenied as i32);
    assert_eq!(lacking.http, 403);
    assert_eq!(lacking.body["error"]["code"], "permission_denied");
    assert!(!lacking.headers.contains_key("www-authenticate"));
    assert_eq!(denied(unknown).http, 403);
    assert_eq!(allowed(held).headers["x-latchkey-scopes"], "tokens:read");
    assert_eq!(
        allowed(every).headers["x-latchkey-scopes"],
        "tokens:read,audit:read"
    );
    allowed(nothing_required);
}

/// Four failed Argon2id checks of `guessed` from `source`: past a limit of three.
async fn guess_four_times(app: &TestApp, guessed: &str, source: &str) {
    for n in 0..4u8 {
        let wrong = forge(guessed, None, Some([n; 32]));
        let d = denied(check(app, check_request(source, &[bearer(&wrong)], None)).await);
        assert_eq!(d.http, 401, "guess {n}");
    }
}

const LIMITED: [&str; 4] = [
    "--hash",
    "argon2id",
    "--rate-limit-failed-verify-per-minute",
    "3",
];

#[tokio::test]
async fn behind_a_trusted_envoy_a_client_past_the_failed_check_limit_is_denied_429_and_others_are_not()
 {
    // Arrange: Envoy (the test, from 127.0.0.1) is a trusted proxy; the attacker and the other
    // client are the sources it reports.
    let mut flags = LIMITED.to_vec();
    flags.extend(["--trusted-proxies", "127.0.0.1/32"]);
    let app = spawn_app_with(&flags).await;
    let (guessed, _) = app.token_with(&app.admin_token, "guessed", &[]).await;
    let (cold_a, _) = app.token_with(&app.admin_token, "cold a", &[]).await;
    let (cold_b, _) = app.token_with(&app.admin_token, "cold b", &[]).await;
    let attacker = "203.0.113.66";
    guess_four_times(&app, &guessed, attacker).await;

    // Act
    let from_attacker = check(&app, check_request(attacker, &[bearer(&cold_a)], None)).await;
    let from_elsewhere = check(&app, check_request(CLIENT, &[bearer(&cold_b)], None)).await;

    // Assert
    let refused = denied(from_attacker);
    assert_eq!(refused.code, Code::ResourceExhausted as i32);
    assert_eq!(refused.http, 429);
    assert!(refused.headers["retry-after"].parse::<u64>().unwrap() >= 1);
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    allowed(from_elsewhere);
}

#[tokio::test]
async fn an_untrusted_caller_cannot_choose_whose_failed_check_limit_its_checks_count_against() {
    // Arrange: no trusted proxies, so every check counts against the caller (127.0.0.1),
    // whatever source it reports.
    let app = spawn_app_with(&LIMITED).await;
    let (guessed, _) = app.token_with(&app.admin_token, "guessed", &[]).await;
    let (cold, _) = app.token_with(&app.admin_token, "cold", &[]).await;
    guess_four_times(&app, &guessed, "203.0.113.66").await;

    // Act
    let reported_elsewhere = check(&app, check_request(CLIENT, &[bearer(&cold)], None)).await;

    // Assert
    assert_eq!(denied(reported_elsewhere).http, 429);
}

#[tokio::test]
async fn a_request_that_is_no_http_check_or_names_another_context_extension_is_invalid_argument() {
    // Arrange
    let app = spawn_app().await;
    let (t, _) = app.token_with(&app.admin_token, "t", &[]).await;
    let mut misspelt = check_request(CLIENT, &[bearer(&t)], None);
    misspelt
        .attributes
        .as_mut()
        .unwrap()
        .context_extensions
        .insert("requires".into(), "tokens:read".into());
    let mut c = client(&app).await;

    // Act
    let not_http = c.check(authz::CheckRequest::default()).await;
    let unknown_extension = c.check(misspelt).await;

    // Assert
    for (name, answer) in [("not http", not_http), ("requires", unknown_extension)] {
        let status = answer.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    }
}

/// What server reflection (v1) answers to one request.
async fn reflect(app: &TestApp, request: MessageRequest) -> MessageResponse {
    let mut c = ServerReflectionClient::new(channel(app).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.unwrap().unwrap();
    answer.message_response.expect("an answer")
}

#[tokio::test]
async fn reflection_lists_and_describes_the_envoy_authorization_service_and_health_reports_it_serving()
 {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // Arrange: a server started without any flag.
    let app = spawn_app().await;

    // Act
    let listed = reflect(&app, MessageRequest::ListServices(String::new())).await;
    let described = reflect(
        &app,
        MessageRequest::FileContainingSymbol(format!("{SERVICE_NAME}.Check")),
    )
    .await;
    let health = HealthClient::new(channel(&app).await)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();

    // Assert
    let MessageResponse::ListServicesResponse(l) = listed else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE_NAME.to_string()), "{names:?}");
    let MessageResponse::FileDescriptorResponse(files) = described else {
        panic!("not a file: {described:?}");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.name(), "envoy/service/auth/v3/external_auth.proto");
    assert_eq!(health.status, ServingStatus::Serving as i32);
}

/// Field numbers of Envoy's (and Google's) protos as found in their repositories (see the
/// comment at the top of each file under proto/envoy/ and proto/google/): Envoy encodes these
/// messages with its own copy, so a wrong number is silently another field.
const ENVOY_FIELDS: &[(&str, i32)] = &[
    ("envoy.service.auth.v3.CheckRequest.attributes", 1),
    ("envoy.service.auth.v3.AttributeContext.source", 1),
    ("envoy.service.auth.v3.AttributeContext.destination", 2),
    ("envoy.service.auth.v3.AttributeContext.request", 4),
    (
        "envoy.service.auth.v3.AttributeContext.context_extensions",
        10,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.metadata_context",
        11,
    ),
    ("envoy.service.auth.v3.AttributeContext.tls_session", 12),
    (
        "envoy.service.auth.v3.AttributeContext.route_metadata_context",
        13,
    ),
    ("envoy.service.auth.v3.AttributeContext.Peer.address", 1),
    ("envoy.service.auth.v3.AttributeContext.Peer.service", 2),
    ("envoy.service.auth.v3.AttributeContext.Peer.labels", 3),
    ("envoy.service.auth.v3.AttributeContext.Peer.principal", 4),
    ("envoy.service.auth.v3.AttributeContext.Peer.certificate", 5),
    ("envoy.service.auth.v3.AttributeContext.Request.time", 1),
    ("envoy.service.auth.v3.AttributeContext.Request.http", 2),
    ("envoy.service.auth.v3.AttributeContext.HttpRequest.id", 1),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.method",
        2,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.headers",
        3,
    ),
    ("envoy.service.auth.v3.AttributeContext.HttpRequest.path", 4),
    ("envoy.service.auth.v3.AttributeContext.HttpRequest.host", 5),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.scheme",
        6,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.query",
        7,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.fragment",
        8,
    ),
    ("envoy.service.auth.v3.AttributeContext.HttpRequest.size", 9),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.protocol",
        10,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.body",
        11,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.raw_body",
        12,
    ),
    (
        "envoy.service.auth.v3.AttributeContext.HttpRequest.header_map",
        13,
    ),
    ("envoy.service.auth.v3.AttributeContext.TLSSession.sni", 1),
    ("envoy.service.auth.v3.DeniedHttpResponse.status", 1),
    ("envoy.service.auth.v3.DeniedHttpResponse.headers", 2),
    ("envoy.service.auth.v3.DeniedHttpResponse.body", 3),
    ("envoy.service.auth.v3.OkHttpResponse.headers", 2),
    ("envoy.service.auth.v3.OkHttpResponse.dynamic_metadata", 3),
    ("envoy.service.auth.v3.OkHttpResponse.headers_to_remove", 5),
    (
        "envoy.service.auth.v3.OkHttpResponse.response_headers_to_add",
        6,
    ),
    ("envoy.service.auth.v3.CheckResponse.status", 1),
    ("envoy.service.auth.v3.CheckResponse.denied_response", 2),
    ("envoy.service.auth.v3.CheckResponse.ok_response", 3),
    ("envoy.service.auth.v3.CheckResponse.dynamic_metadata", 4),
    ("envoy.config.core.v3.Metadata.filter_metadata", 1),
    ("envoy.config.core.v3.Metadata.typed_filter_metadata", 2),
    ("envoy.config.core.v3.HeaderValue.key", 1),
    ("envoy.config.core.v3.HeaderValue.value", 2),
    ("envoy.config.core.v3.HeaderValue.raw_value", 3),
    ("envoy.config.core.v3.HeaderValueOption.header", 1),
    ("envoy.config.core.v3.HeaderValueOption.append", 2),
    ("envoy.config.core.v3.HeaderValueOption.append_action", 3),
    ("envoy.config.core.v3.HeaderValueOption.keep_empty_value", 4),
    ("envoy.config.core.v3.HeaderMap.headers", 1),
    ("envoy.config.core.v3.Address.socket_address", 1),
    ("envoy.config.core.v3.Address.pipe", 2),
    ("envoy.config.core.v3.Address.envoy_internal_address", 3),
    ("envoy.config.core.v3.SocketAddress.protocol", 1),
    ("envoy.config.core.v3.SocketAddress.address", 2),
    ("envoy.config.core.v3.SocketAddress.port_value", 3),
    ("envoy.config.core.v3.SocketAddress.named_port", 4),
    ("envoy.config.core.v3.SocketAddress.resolver_name", 5),
    ("envoy.config.core.v3.SocketAddress.ipv4_compat", 6),
    (
        "envoy.config.core.v3.SocketAddress.network_namespace_filepath",
        7,
    ),
    ("envoy.config.core.v3.Pipe.path", 1),
    ("envoy.config.core.v3.Pipe.mode", 2),
    (
        "envoy.config.core.v3.EnvoyInternalAddress.server_listener_name",
        1,
    ),
    ("envoy.config.core.v3.EnvoyInternalAddress.endpoint_id", 2),
    ("envoy.type.v3.HttpStatus.code", 1),
    ("google.rpc.Status.code", 1),
    ("google.rpc.Status.message", 2),
    ("google.rpc.Status.details", 3),
];

/// Enum values Latchkey sends, as Envoy numbers them.
const ENVOY_ENUM_VALUES: &[(&str, i32)] = &[
    ("envoy.type.v3.StatusCode.Unauthorized", 401),
    ("envoy.type.v3.StatusCode.Forbidden", 403),
    ("envoy.type.v3.StatusCode.TooManyRequests", 429),
    ("envoy.type.v3.StatusCode.InternalServerError", 500),
    ("envoy.type.v3.StatusCode.ServiceUnavailable", 503),
    (
        "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD",
        0,
    ),
    (
        "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD",
        2,
    ),
];

/// Every field and enum value of `msgs` (and nested messages) as `prefix.Message.name` -> number.
fn numbers(
    prefix: &str,
    msgs: &[prost_types::DescriptorProto],
    enums: &[prost_types::EnumDescriptorProto],
    out: &mut HashMap<String, i32>,
) {
    for e in enums {
        for v in &e.value {
            out.insert(format!("{prefix}.{}.{}", e.name(), v.name()), v.number());
        }
    }
    for m in msgs {
        let name = format!("{prefix}.{}", m.name());
        for f in &m.field {
            out.insert(format!("{name}.{}", f.name()), f.number());
        }
        numbers(&name, &m.nested_type, &m.enum_type, out);
    }
}

#[test]
fn the_envoy_protos_keep_envoys_package_names_and_field_numbers() {
    // Arrange
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();

    // Act
    let mut found = HashMap::new();
    let mut methods = Vec::new();
    for file in &fds.file {
        numbers(
            file.package(),
            &file.message_type,
            &file.enum_type,
            &mut found,
        );
        for s in &file.service {
            for m in &s.method {
                methods.push(format!(
                    "{}.{}/{}({}) -> {}",
                    file.package(),
                    s.name(),
                    m.name(),
                    m.input_type(),
                    m.output_type()
                ));
            }
        }
    }

    // Assert
    for (field, number) in ENVOY_FIELDS.iter().chain(ENVOY_ENUM_VALUES) {
        assert_eq!(found.get(*field), Some(number), "{field}");
    }
    assert_eq!(
        methods,
        [format!(
            "{SERVICE_NAME}/Check(.envoy.service.auth.v3.CheckRequest) -> \
             .envoy.service.auth.v3.CheckResponse"
        )]
    );
}

fn text(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn example() -> Yaml {
    YamlLoader::load_from_str(&text("examples/envoy/envoy.yaml"))
        .expect("examples/envoy/envoy.yaml is YAML")
        .remove(0)
}

/// The one HTTP connection manager of the example.
fn connection_manager(config: &Yaml) -> &Yaml {
    &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

#[test]
fn the_envoy_config_in_gateway_md_is_the_example_and_asks_latchkey_as_the_docs_say() {
    // Arrange
    let page = text("docs/gateway.md");
    let shown = page
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in docs/gateway.md");
    let config = example();
    let hcm = connection_manager(&config);

    // Act
    let filters = hcm["http_filters"].as_vec().expect("http_filters");
    let authz = &filters[0];
    let cluster_name = authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .expect("grpc_service.envoy_grpc.cluster_name");
    let clusters = config["static_resources"]["clusters"].as_vec().unwrap();
    let latchkey = clusters
        .iter()
        .find(|c| c["name"].as_str() == Some(cluster_name))
        .expect("the cluster grpc_service names");
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_vec()
        .unwrap();

    // Assert
    assert_eq!(shown, text("examples/envoy/envoy.yaml"));
    assert_eq!(authz["name"].as_str(), Some(EXT_AUTHZ));
    assert_eq!(
        authz["typed_config"]["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    );
    assert_eq!(
        authz["typed_config"]["transport_api_version"].as_str(),
        Some("V3")
    );
    assert_eq!(
        authz["typed_config"]["failure_mode_allow"].as_bool(),
        Some(false)
    );
    assert_eq!(
        filters.last().unwrap()["name"].as_str(),
        Some("envoy.filters.http.router")
    );
    assert!(
        !latchkey["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_badvalue(),
        "gRPC needs HTTP/2 to Latchkey"
    );
    let endpoint = &latchkey["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        endpoint["port_value"].as_i64(),
        Some(8080),
        "Latchkey's default port"
    );
    let mut required = Vec::new();
    for route in routes {
        let per_route = &route["typed_per_filter_config"];
        if per_route.is_badvalue() {
            continue;
        }
        let per_filter = per_route.as_hash().unwrap();
        assert!(
            per_filter
                .keys()
                .all(|k| k.as_str() == authz["name"].as_str()),
            "per-route settings name the ext_authz filter: {per_filter:?}"
        );
        let ext = per_route[EXT_AUTHZ]["check_settings"]["context_extensions"]
            .as_hash()
            .unwrap();
        assert!(
            ext.keys().all(|k| k.as_str() == Some(REQUIRE)),
            "Latchkey refuses other context extensions: {ext:?}"
        );
        required.push(
            ext[&Yaml::String(REQUIRE.into())]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(required, ["runs:read"]);
    for named in [
        EXT_AUTHZ,
        "transport_api_version: V3",
        "failure_mode_allow: false",
        "context_extensions",
        SERVICE_NAME,
        "--trusted-proxies",
    ] {
        assert!(page.contains(named), "docs/gateway.md names {named}");
    }
}

#[tokio::test]
async fn the_example_routes_scope_is_required_as_its_context_extensions_say() {
    // Arrange: a deployment that declares the example's scope; the check Envoy sends for its
    // `/runs/` route carries that route's context extensions.
    let config = example();
    let runs_route = &connection_manager(&config)["route_config"]["virtual_hosts"][0]["routes"][0];
    let require =
        runs_route["typed_per_filter_config"][EXT_AUTHZ]["check_settings"]["context_extensions"]
            [REQUIRE]
            .as_str()
            .unwrap()
            .to_string();
    let dir = tempfile::TempDir::new().unwrap();
    let cfg = dir.path().join("latchkey.toml");
    std::fs::write(&cfg, "[[scopes]]\nname = \"runs:read\"\nbit = 16\n").unwrap();
    let app = spawn_app_with(&["--config", cfg.to_str().unwrap()]).await;
    let (runner, _) = app
        .token_with(&app.admin_token, "runner", &["runs:read"])
        .await;
    let (other, _) = app
        .token_with(&app.admin_token, "other", &["tokens:read"])
        .await;

    // Act
    let with_scope = check(
        &app,
        check_request(CLIENT, &[bearer(&runner)], Some(&require)),
    )
    .await;
    let without = check(
        &app,
        check_request(CLIENT, &[bearer(&other)], Some(&require)),
    )
    .await;

    // Assert
    assert_eq!(
        allowed(with_scope).headers["x-latchkey-scopes"],
        "runs:read"
    );
    assert_eq!(denied(without).http, 403);
}
