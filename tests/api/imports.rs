//! Moving in: keys another system stored (their hashes, never plaintexts) imported with
//! `latchkey import` and `POST /v1/tokens/import`, then verified, revoked, rotated, disabled
//! and counted like native tokens. Each fixture is made here in its source's own format and
//! hashed the way that source stores it; the ibex service's Argon2id vector is the one fixed key.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};
use tonic::Request;
use tonic::transport::Channel;

use crate::helpers::{BIN, TestApp, error_of, spawn_app};

// Fixtures: plaintexts in each source's format, and the import lines of what it stored.

/// The ibex service's local-development key: Argon2id (m=64 MiB, t=3) of the whole token.
/// Every check of it without a warm cache costs an Argon2id computation: used sparingly.
const IBEX_ID: &str = "00000000-0000-0000-0000-000000000004";
const IBEX_TOKEN: &str = "ibex_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY";
const IBEX_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$v7OU5izBPGnx4P47/nOoGQ$Ozd/9sqIqvtVBwk5fdfTGnXGkmflQej0xtooVgaAxh8";

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("OS randomness");
    bytes
        .iter()
        .map(|b| alphabet[usize::from(*b) % alphabet.len()] as char)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn sha512_hex(s: &str) -> String {
    hex(&Sha512::digest(s.as_bytes()))
}

/// Laravel token package: `tok_` and 64 hex digits.
fn laravel_token() -> String {
    format!("tok_{}", random_from(HEX, 64))
}

/// Flask service: `spci_` and 43 base64url characters.
fn flask_token() -> String {
    format!("spci_{}", random_from(BASE64URL, 43))
}

/// Go org keys: 43 base64url characters, no prefix.
fn org_key() -> String {
    random_from(BASE64URL, 43)
}

/// djangorestframework-api-key: `<8 alphanumerics>.<32 alphanumerics>`.
fn drf_key(prefix: &str) -> String {
    format!("{prefix}.{}", random_from(ALNUM, 32))
}

/// Laravel Sanctum's text after `<id>|`: 40 random alphanumerics and their crc32b in hex.
fn sanctum_secret() -> String {
    with_crc(&random_from(ALNUM, 40))
}

fn with_crc(entropy: &str) -> String {
    format!("{entropy}{:08x}", crc32fast::hash(entropy.as_bytes()))
}

/// A key as its source handed it out, strings of the same shape that must not verify, and the
/// import line of what the source stored.
struct Legacy {
    name: &'static str,
    scheme: &'static str,
    plaintext: String,
    impostors: Vec<String>,
    line: Value,
}

/// One key of every source (the ibex vector too when `with_ibex`), all granting `scopes`.
fn every_source(scopes: &[&str], with_ibex: bool) -> Vec<Legacy> {
    let mut keys = vec![
        laravel(scopes),
        flask(scopes),
        go_org_key(scopes),
        drf("drf", scopes, true),
        drf("drf bare", scopes, false),
        sanctum(17, scopes),
    ];
    if with_ibex {
        keys.push(ibex(scopes));
    }
    keys
}

fn laravel(scopes: &[&str]) -> Legacy {
    let plaintext = laravel_token();
    Legacy {
        name: "laravel",
        scheme: "sha256",
        line: json!({"scheme": "sha256", "hash": sha256_hex(&plaintext), "name": "laravel", "scopes": scopes}),
        impostors: vec![laravel_token()],
        plaintext,
    }
}

fn flask(scopes: &[&str]) -> Legacy {
    let plaintext = flask_token();
    Legacy {
        name: "flask",
        scheme: "sha256",
        line: json!({
            "scheme": "sha256", "hash": sha256_hex(&plaintext), "name": "flask", "scopes": scopes,
            "type": "svc", "metadata": {"source": "flask"},
        }),
        impostors: vec![flask_token()],
        plaintext,
    }
}

/// The Go service's digests, exported in upper case: hex is hex.
fn go_org_key(scopes: &[&str]) -> Legacy {
    let plaintext = org_key();
    Legacy {
        name: "org key",
        scheme: "sha256",
        line: json!({
            "scheme": "sha256", "hash": sha256_hex(&plaintext).to_uppercase(), "name": "org key",
            "scopes": scopes,
        }),
        impostors: vec![org_key()],
        plaintext,
    }
}

/// Django's `sha512$$<hex>`, or the bare hex digest.
fn drf(name: &'static str, scopes: &[&str], django_prefix: bool) -> Legacy {
    let prefix = random_from(ALNUM, 8);
    let plaintext = drf_key(&prefix);
    let digest = sha512_hex(&plaintext);
    let hash = if django_prefix {
        format!("sha512$${digest}")
    } else {
        digest
    };
    Legacy {
        name,
        scheme: "sha512",
        line: json!({"scheme": "sha512", "hash": hash, "name": name, "scopes": scopes}),
        // The same public prefix with another secret.
        impostors: vec![drf_key(&prefix)],
        plaintext,
    }
}

fn sanctum(sanctum_id: u64, scopes: &[&str]) -> Legacy {
    let secret = sanctum_secret();
    let mut bad_crc = secret.clone();
    let last = if bad_crc.ends_with('0') { "1" } else { "0" };
    bad_crc.replace_range(bad_crc.len() - 1.., last);
    Legacy {
        name: "sanctum",
        scheme: "sanctum",
        line: json!({
            "scheme": "sanctum", "hash": sha256_hex(&secret), "sanctum_id": sanctum_id,
            "name": "sanctum", "scopes": scopes,
        }),
        impostors: vec![
            // Another key of the same row: right id, right shape, a valid crc.
            format!("{sanctum_id}|{}", sanctum_secret()),
            // The right secret under another row's id.
            format!("{}|{secret}", sanctum_id + 1),
            // The right secret with its crc mistyped.
            format!("{sanctum_id}|{bad_crc}"),
        ],
        plaintext: format!("{sanctum_id}|{secret}"),
    }
}

fn ibex(scopes: &[&str]) -> Legacy {
    Legacy {
        name: "ibex",
        scheme: "argon2id-embedded-uuid",
        plaintext: IBEX_TOKEN.to_string(),
        impostors: vec![
            IBEX_TOKEN.replace("LOCALDEVELOPMENTONLY", "LOCALDEVELOPMENTONLZ"),
            "LOCALDEVELOPMENTONLY".to_string(),
        ],
        line: json!({
            "scheme": "argon2id-embedded-uuid", "hash": IBEX_HASH, "id": IBEX_ID, "name": "ibex",
            "scopes": scopes,
        }),
    }
}

fn lines_of(keys: &[Legacy]) -> Vec<Value> {
    keys.iter().map(|k| k.line.clone()).collect()
}

fn jsonl(lines: &[Value]) -> String {
    lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// Driving the import, the CLI and the other transports.

async fn import_raw(app: &TestApp, token: &str, query: &str, body: String) -> Response {
    app.post_raw(
        &format!("/v1/tokens/import{query}"),
        token,
        "application/x-ndjson",
        body,
    )
    .await
}

async fn import(app: &TestApp, token: &str, query: &str, lines: &[Value]) -> Response {
    import_raw(app, token, query, jsonl(lines)).await
}

/// Imports `lines` into the caller's org, asserting 200; returns the report.
async fn imported(app: &TestApp, token: &str, lines: &[Value]) -> Value {
    let res = import(app, token, "", lines).await;
    let status = res.status();
    let report: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

/// The token id the report gives for `line`.
fn id_of(report: &Value, line: usize) -> String {
    report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["line"] == line)
        .unwrap_or_else(|| panic!("line {line} missing from {report}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `latchkey import <args> --database-url <the app's>`, with `stdin` piped in when given.
fn cli_import(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("import")
        .args(args)
        .args(["--database-url", &app.database_url])
        .env_remove("LATCHKEY_IMPORT_ORG_ID")
        .env_remove("LATCHKEY_IMPORT_ORG_NAME")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start latchkey import");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Writes `lines` as a JSON Lines file in the app's directory; returns its path.
fn keys_file(app: &TestApp, file: &str, lines: &[Value]) -> String {
    let path = app.dir.path().join(file);
    std::fs::write(&path, jsonl(lines)).unwrap();
    path.display().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Every token of the app's own org, newest first.
async fn tokens(app: &TestApp, query: &str) -> Vec<Value> {
    let res = app
        .get(
            &format!("/v1/tokens?page_size=500{query}"),
            &app.admin_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.unwrap();
    page["tokens"].as_array().unwrap().clone()
}

fn ids(tokens: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = tokens
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn token_view(app: &TestApp, id: &str) -> Value {
    let res = app.get(&format!("/v1/tokens/{id}"), &app.admin_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// The app's audit events (newest first), with `query` as filter.
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let res = app
        .get(&format!("/v1/audit?page_size=500{query}"), &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.unwrap();
    page["events"].as_array().unwrap().clone()
}

/// The id of the token behind `token`.
async fn id_behind(app: &TestApp, token: &str) -> String {
    app.verify(token, &[]).await["token_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn grpc(app: &TestApp) -> AuthServiceClient<Channel> {
    AuthServiceClient::connect(app.address.clone())
        .await
        .expect("gRPC connect")
}

async fn validate(
    c: &mut AuthServiceClient<Channel>,
    token: &str,
    required: &[&str],
) -> pb::ValidateTokenResponse {
    c.validate_token(pb::ValidateTokenRequest {
        token: token.into(),
        required_scopes: required.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The gateway check with `token` as bearer, requiring `require` (comma-separated) if any.
async fn check(app: &TestApp, token: &str, require: &str) -> Response {
    let query = if require.is_empty() {
        String::new()
    } else {
        format!("?require={require}")
    };
    app.request(
        Method::GET,
        &format!("/v1/auth/check{query}"),
        Some(token),
        None,
    )
    .await
}

/// `ListTokens` over gRPC with the admin token, filtered by `format`.
async fn list_over_grpc(
    app: &TestApp,
    format: &str,
) -> Result<pb::ListTokensResponse, tonic::Status> {
    let mut req = Request::new(pb::ListTokensRequest {
        format: format.into(),
        page_size: 500,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", app.admin_token).parse().unwrap(),
    );
    grpc(app)
        .await
        .list_tokens(req)
        .await
        .map(|r| r.into_inner())
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// The token's view once its `request_count` is `count` (usage is flushed every second; a
/// count that never gets there returns the last view).
async fn view_counting(app: &TestApp, id: &str, count: i64) -> Value {
    let mut view = Value::Null;
    for _ in 0..400 {
        view = token_view(app, id).await;
        if view["request_count"] == count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    view
}

/// Asserts that `key` verifies with `scopes` over REST, gRPC and the gateway check, as token
/// `id` of `org`, and that none of its impostors does.
async fn assert_verifies_everywhere(
    app: &TestApp,
    key: &Legacy,
    id: &str,
    org: &str,
    scopes: &[&str],
) {
    let mut c = grpc(app).await;
    let rest = app.verify(&key.plaintext, scopes).await;
    assert_eq!(rest["code"], "VALID", "{}: {rest}", key.name);
    assert_eq!(rest["valid"], true, "{}", key.name);
    assert_eq!(rest["token_id"], id, "{}", key.name);
    assert_eq!(rest["org_id"], org, "{}", key.name);
    assert_eq!(rest["scopes"], json!(scopes), "{}", key.name);
    let lacking = app.verify(&key.plaintext, &["tokens:create"]).await;
    assert_eq!(lacking["code"], "INSUFFICIENT_PERMISSIONS", "{}", key.name);
    let over_grpc = validate(&mut c, &key.plaintext, scopes).await;
    assert_eq!(
        over_grpc.code,
        pb::ValidationCode::Valid as i32,
        "{}",
        key.name
    );
    assert_eq!(over_grpc.token_id, id, "{}", key.name);
    assert_eq!(over_grpc.scopes, scopes, "{}", key.name);
    let gateway = check(app, &key.plaintext, &scopes.join(",")).await;
    assert_eq!(gateway.status(), StatusCode::NO_CONTENT, "{}", key.name);
    assert_eq!(gateway.headers()["x-latchkey-token-id"], id, "{}", key.name);
    assert_eq!(gateway.headers()["x-latchkey-org-id"], org, "{}", key.name);
    assert_eq!(
        gateway.headers()["x-latchkey-scopes"],
        scopes.join(",").as_str(),
        "{}",
        key.name
    );
    for impostor in &key.impostors {
        let rest = app.verify(impostor, scopes).await;
        assert_eq!(rest["code"], "INVALID", "{}: {impostor}", key.name);
        assert!(rest.get("token_id").is_none(), "{}: {rest}", key.name);
        let over_grpc = validate(&mut c, impostor, scopes).await;
        assert_eq!(
            over_grpc.code,
            pb::ValidationCode::Invalid as i32,
            "{}: {impostor}",
            key.name
        );
        let gateway = check(app, impostor, "").await;
        assert_eq!(
            gateway.status(),
            StatusCode::UNAUTHORIZED,
            "{}: {impostor}",
            key.name
        );
    }
}

// Importing with the command line, before the server starts.

#[tokio::test]
async fn keys_of_every_source_imported_by_the_cli_verify_over_rest_grpc_and_the_gateway() {
    // Arrange: a deployment stopped for the move, and a file with one key of every source.
    let mut first = spawn_app().await;
    let scopes = ["tokens:read", "audit:read"];
    let keys = every_source(&scopes, true);
    let file = keys_file(&first, "keys.jsonl", &lines_of(&keys));
    assert!(first.stop_gracefully());

    // Act
    let out = cli_import(&first, &[&file, "--org-name", "default", "--json"], None);
    let mut app = first.restart(&[]).await;
    app.admin_token = first.admin_token.clone();
    app.org_id = first.org_id;

    // Assert: the summary, the report, then every key on every path.
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("7 imported, 0 already present, 0 refused"),
        "{}",
        stderr(&out)
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["imported"], 7, "{report}");
    assert_eq!(report["written"], true);
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["refused"], json!([]));
    assert_eq!(id_of(&report, 7), IBEX_ID, "the ibex id is kept");
    let org = app.org_id.to_string();
    let argon2_before = app.metric("latchkey_argon2_checks_total").await;
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(report["keys"][i]["status"], "imported");
        let id = id_of(&report, i + 1);
        assert_verifies_everywhere(&app, key, &id, &org, &scopes).await;
        let view = token_view(&app, &id).await;
        assert_eq!(view["format"], key.scheme, "{view}");
        assert_eq!(view["name"], key.name);
        assert_eq!(view["state"], "active");
        assert_eq!(view["created_by"], "import");
    }
    assert_eq!(
        app.metric("latchkey_argon2_checks_total").await - argon2_before,
        1.0,
        "one Argon2id check for the ibex key; every later one (and its impostor's) is warm"
    );
    let events = audit(&app, "&action=token_imported").await;
    assert_eq!(events.len(), 7);
    for e in &events {
        assert_eq!(e["actor"], "import", "{e}");
        let line = e["details"]["line"].as_u64().unwrap() as usize;
        let key = &keys[line - 1];
        assert_eq!(e["details"]["scheme"], key.scheme, "{e}");
        assert_eq!(e["details"]["name"], key.name, "{e}");
        assert_eq!(
            e["details"].as_object().unwrap().len(),
            3,
            "only these: {e}"
        );
        assert_eq!(e["token_id"], id_of(&report, line).as_str());
    }
}

#[tokio::test]
async fn the_cli_reads_keys_from_stdin_and_needs_an_org_for_keys_without_one() {
    // Arrange
    let app = spawn_app().await;
    let key = laravel(&[]);
    let text = jsonl(std::slice::from_ref(&key.line));

    // Act
    let no_org = cli_import(&app, &["-"], Some(&text));
    let unknown_org = cli_import(&app, &["-", "--org-name", "nowhere"], Some(&text));
    let into_org = cli_import(
        &app,
        &["-", "--org-id", &app.org_id.to_string()],
        Some(&text),
    );

    // Assert
    assert_eq!(no_org.status.code(), Some(1));
    assert!(
        stderr(&no_org).contains("line 1: refused: org_id is missing"),
        "{}",
        stderr(&no_org)
    );
    assert!(!unknown_org.status.success());
    assert!(
        stderr(&unknown_org).contains("no org named"),
        "{}",
        stderr(&unknown_org)
    );
    assert!(into_org.status.success(), "{}", stderr(&into_org));
    assert!(stderr(&into_org).contains("1 imported, 0 already present, 0 refused"));
    assert_eq!(
        tokens(&app, "&format=sha256").await.len(),
        1,
        "one key, from the third run only"
    );
}

// Importing through the API, into a running server.

#[tokio::test]
async fn keys_imported_through_the_api_verify_at_once_and_keep_what_their_source_knew() {
    // Arrange
    let app = spawn_app().await;
    let admin_id = id_behind(&app, &app.admin_token).await;
    let scopes = ["tokens:read"];
    let keys = every_source(&scopes, true);
    let mut lines = lines_of(&keys);
    // Whole seconds: the store keeps microseconds, the JSON would carry nanoseconds.
    let created_at = Utc::now().trunc_subsecs(0) - TimeDelta::days(400);
    let last_used_at = Utc::now().trunc_subsecs(0) - TimeDelta::days(3);
    let expires_at = Utc::now().trunc_subsecs(0) + TimeDelta::days(30);
    let extra = json!({
        "created_at": created_at, "last_used_at": last_used_at, "expires_at": expires_at,
        "request_count": 1234,
    });
    for (k, v) in extra.as_object().unwrap() {
        lines[0][k] = v.clone();
    }

    // Act
    let report = imported(&app, &app.admin_token, &lines).await;

    // Assert: every key verifies at once, with nothing more than the import in between.
    assert_eq!(report["imported"], 7, "{report}");
    assert_eq!(report["already_present"], 0);
    assert_eq!(report["written"], true);
    assert_eq!(report["dry_run"], false);
    let org = app.org_id.to_string();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(report["keys"][i]["line"], i + 1);
        assert_eq!(report["keys"][i]["status"], "imported");
        assert_verifies_everywhere(&app, key, &id_of(&report, i + 1), &org, &scopes).await;
    }
    let laravel = token_view(&app, &id_of(&report, 1)).await;
    assert_eq!(laravel["format"], "sha256");
    assert_eq!(time(&laravel["created_at"]), created_at);
    assert_eq!(time(&laravel["expires_at"]), expires_at);
    assert!(time(&laravel["last_used_at"]) >= last_used_at);
    assert!(laravel["request_count"].as_i64().unwrap() >= 1234);
    assert_eq!(laravel["created_by"], format!("token:{admin_id}"));
    let flask = token_view(&app, &id_of(&report, 2)).await;
    assert_eq!(flask["type"], "svc");
    assert_eq!(flask["metadata"], json!({"source": "flask"}));
    assert_eq!(flask["expires_at"], Value::Null);
    let events = audit(&app, "&action=token_imported").await;
    assert_eq!(events.len(), 7);
    assert!(
        events
            .iter()
            .all(|e| e["actor"] == format!("token:{admin_id}"))
    );
}

#[tokio::test]
async fn the_token_list_filters_by_format_over_rest_and_grpc() {
    // Arrange
    let app = spawn_app().await;
    let keys = every_source(&[], false);
    let report = imported(&app, &app.admin_token, &lines_of(&keys)).await;
    let (_, native) = app.token_with(&app.admin_token, "native one", &[]).await;
    let mut c = grpc(&app).await;

    // Act
    let sha256 = tokens(&app, "&format=sha256").await;
    let sha512 = tokens(&app, "&format=sha512").await;
    let sanctum = tokens(&app, "&format=sanctum").await;
    let natives = tokens(&app, "&format=native").await;
    let every = tokens(&app, "").await;
    let bad = app.get("/v1/tokens?format=md5", &app.admin_token).await;
    let over_grpc = list_over_grpc(&app, "sha512").await.unwrap();
    let bad_over_grpc = list_over_grpc(&app, "md5").await.unwrap_err();
    let got = c
        .get_token({
            let mut req = Request::new(pb::GetTokenRequest {
                org_id: String::new(),
                token_id: id_of(&report, 6),
            });
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", app.admin_token).parse().unwrap(),
            );
            req
        })
        .await
        .unwrap()
        .into_inner();

    // Assert
    let lines = |ls: &[usize]| {
        let mut v: Vec<String> = ls.iter().map(|l| id_of(&report, *l)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&sha256), lines(&[1, 2, 3]));
    assert_eq!(ids(&sha512), lines(&[4, 5]));
    assert_eq!(ids(&sanctum), lines(&[6]));
    assert!(natives.iter().all(|t| t["format"] == "native"));
    assert!(ids(&natives).contains(&native["id"].as_str().unwrap().to_string()));
    assert_eq!(natives.len(), 2, "the bootstrap token and the new one");
    assert_eq!(every.len(), 8);
    error_of(bad, StatusCode::BAD_REQUEST).await;
    let mut grpc_ids: Vec<String> = over_grpc.tokens.iter().map(|t| t.id.clone()).collect();
    grpc_ids.sort();
    assert_eq!(grpc_ids, lines(&[4, 5]));
    assert!(over_grpc.tokens.iter().all(|t| t.format == "sha512"));
    assert_eq!(bad_over_grpc.code(), tonic::Code::InvalidArgument);
    assert_eq!(got.format, "sanctum");
}

#[tokio::test]
async fn a_json_array_body_imports_like_json_lines_with_positions_as_line_numbers() {
    // Arrange
    let app = spawn_app().await;
    let (good, flask) = (laravel(&[]), flask(&[]));
    let mut unknown = drf("drf", &[], true).line;
    unknown["team"] = json!("payments");

    // Act
    let refused = app
        .post_raw(
            "/v1/tokens/import",
            &app.admin_token,
            "application/json",
            json!([good.line, flask.line, unknown]).to_string(),
        )
        .await;
    let accepted = app
        .post_raw(
            "/v1/tokens/import",
            &app.admin_token,
            "application/json; charset=utf-8",
            json!([good.line, flask.line]).to_string(),
        )
        .await;

    // Assert
    let body = error_of(refused, StatusCode::BAD_REQUEST).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 3:"), "{message}");
    assert!(message.contains("team"), "{message}");
    assert!(!message.contains("line 1:") && !message.contains("line 2:"));
    assert_eq!(accepted.status(), StatusCode::OK);
    let report: Value = accepted.json().await.unwrap();
    assert_eq!(report["imported"], 2);
    assert_eq!(
        app.verify(&flask.plaintext, &[]).await["token_id"],
        id_of(&report, 2).as_str()
    );
}

#[tokio::test]
async fn an_imported_key_is_a_bearer_for_the_calls_its_scopes_allow() {
    // Arrange
    let app = spawn_app().await;
    let (reader, sanctum_creator) = (laravel(&["tokens:read"]), sanctum(3, &["tokens:create"]));
    imported(
        &app,
        &app.admin_token,
        &[reader.line.clone(), sanctum_creator.line.clone()],
    )
    .await;

    // Act
    let list = app.get("/v1/tokens", &reader.plaintext).await;
    let create_without_scope = app
        .post("/v1/tokens", &reader.plaintext, json!({"name": "nope"}))
        .await;
    let created = app
        .post(
            "/v1/tokens",
            &sanctum_creator.plaintext,
            json!({"name": "minted by a sanctum key"}),
        )
        .await;
    let impostor = app.get("/v1/tokens", &reader.impostors[0]).await;

    // Assert
    assert_eq!(list.status(), StatusCode::OK);
    let denied = error_of(create_without_scope, StatusCode::FORBIDDEN).await;
    assert_eq!(denied["error"]["code"], "permission_denied");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let sanctum_id = id_behind(&app, &sanctum_creator.plaintext).await;
    assert_eq!(
        created["token"]["created_by"],
        format!("token:{sanctum_id}")
    );
    let refused = error_of(impostor, StatusCode::UNAUTHORIZED).await;
    assert_eq!(refused["error"]["code"], "unauthenticated");
}

// What the source knew about a key's state, and the lifecycle afterwards.

#[tokio::test]
async fn keys_revoked_or_expired_at_their_source_are_imported_as_such_and_refused() {
    // Arrange
    let app = spawn_app().await;
    let (mut revoked, mut expired) = (laravel(&[]), sanctum(8, &[]));
    let past = Utc::now() - TimeDelta::days(2);
    revoked.line["revoked_at"] = json!(past);
    expired.line["expires_at"] = json!(past);

    // Act
    let report = imported(
        &app,
        &app.admin_token,
        &[revoked.line.clone(), expired.line.clone()],
    )
    .await;

    // Assert
    assert_eq!(report["imported"], 2, "{report}");
    let mut c = grpc(&app).await;
    for (key, line, state) in [(&revoked, 1, "revoked"), (&expired, 2, "expired")] {
        assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "INVALID");
        assert_eq!(
            validate(&mut c, &key.plaintext, &[]).await.code,
            pb::ValidationCode::Invalid as i32
        );
        assert_eq!(
            check(&app, &key.plaintext, "").await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.get("/v1/tokens", &key.plaintext).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let view = token_view(&app, &id_of(&report, line)).await;
        assert_eq!(view["state"], state, "{view}");
    }
}

#[tokio::test]
async fn revoking_or_disabling_an_imported_key_ends_it_on_every_path() {
    // Arrange: both keys verified once, so they are in the verify cache.
    let app = spawn_app().await;
    let (laravel, sanctum) = (laravel(&[]), sanctum(41, &[]));
    let report = imported(
        &app,
        &app.admin_token,
        &[laravel.line.clone(), sanctum.line.clone()],
    )
    .await;
    let (laravel_id, sanctum_id) = (id_of(&report, 1), id_of(&report, 2));
    assert_eq!(app.verify(&laravel.plaintext, &[]).await["code"], "VALID");
    assert_eq!(app.verify(&sanctum.plaintext, &[]).await["code"], "VALID");
    let mut c = grpc(&app).await;

    // Act + Assert: revoked.
    let res = app
        .delete(&format!("/v1/tokens/{laravel_id}"), &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify(&laravel.plaintext, &[]).await["code"], "INVALID");
    assert_eq!(
        validate(&mut c, &laravel.plaintext, &[]).await.code,
        pb::ValidationCode::Invalid as i32
    );
    assert_eq!(
        check(&app, &laravel.plaintext, "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(token_view(&app, &laravel_id).await["state"], "revoked");
    let revoked = audit(
        &app,
        &format!("&action=token_revoked&token_id={laravel_id}"),
    )
    .await;
    assert_eq!(revoked.len(), 1);

    // Act + Assert: disabled, then enabled again.
    let res = app
        .post(
            &format!("/v1/tokens/{sanctum_id}/disable"),
            &app.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify(&sanctum.plaintext, &[]).await["code"], "INVALID");
    assert_eq!(
        check(&app, &sanctum.plaintext, "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(token_view(&app, &sanctum_id).await["state"], "disabled");
    let res = app
        .post(
            &format!("/v1/tokens/{sanctum_id}/enable"),
            &app.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify(&sanctum.plaintext, &[]).await["code"], "VALID");
}

#[tokio::test]
async fn rotating_an_imported_key_issues_a_native_token_and_the_old_key_lasts_the_grace() {
    // Arrange
    let app = spawn_app().await;
    let scopes = ["tokens:read", "audit:read"];
    let (drf, flask) = (drf("drf", &scopes, true), flask(&scopes));
    let report = imported(
        &app,
        &app.admin_token,
        &[drf.line.clone(), flask.line.clone()],
    )
    .await;
    let (drf_id, flask_id) = (id_of(&report, 1), id_of(&report, 2));

    // Act
    let graceful = app
        .post(
            &format!("/v1/tokens/{drf_id}/rotate"),
            &app.admin_token,
            json!({}),
        )
        .await;
    let at_once = app
        .post(
            &format!("/v1/tokens/{flask_id}/rotate"),
            &app.admin_token,
            json!({"grace_seconds": 0}),
        )
        .await;

    // Assert: default grace, the old key works on; the new token is native, with the same
    // name and scopes.
    assert_eq!(graceful.status(), StatusCode::CREATED);
    let graceful: Value = graceful.json().await.unwrap();
    let new = graceful["plaintext"].as_str().unwrap();
    assert!(new.starts_with("lk_pat_"), "a native plaintext");
    let new_view = &graceful["token"];
    assert_eq!(new_view["format"], "native");
    assert_eq!(new_view["name"], "drf");
    assert_eq!(new_view["scopes"], json!(scopes));
    assert_eq!(graceful["previous"]["replaced_by"], new_view["id"]);
    let old_expiry = time(&graceful["previous"]["expires_at"]);
    let grace = old_expiry - Utc::now();
    assert!(
        grace > TimeDelta::minutes(55) && grace <= TimeDelta::hours(1),
        "{grace}"
    );
    assert_eq!(app.verify(&drf.plaintext, &scopes).await["code"], "VALID");
    let new_check = app.verify(new, &scopes).await;
    assert_eq!(new_check["code"], "VALID");
    assert_eq!(new_check["token_id"], new_view["id"]);
    assert_eq!(
        check(&app, new, "tokens:read").await.status(),
        StatusCode::NO_CONTENT
    );

    // Assert: grace 0, the old key is over at once and the new one works.
    assert_eq!(at_once.status(), StatusCode::CREATED);
    let at_once: Value = at_once.json().await.unwrap();
    assert_eq!(at_once["token"]["format"], "native");
    assert_eq!(at_once["token"]["type"], "svc");
    assert_eq!(app.verify(&flask.plaintext, &[]).await["code"], "INVALID");
    assert_eq!(
        check(&app, &flask.plaintext, "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify(at_once["plaintext"].as_str().unwrap(), &[])
            .await["code"],
        "VALID"
    );
    let rotated = audit(&app, "&action=token_rotated").await;
    assert_eq!(rotated.len(), 2);
}

#[tokio::test]
async fn verifications_of_imported_keys_are_counted_on_top_of_their_source_counts() {
    // Arrange: a key used 40 times at its source, ten days ago, and a key never used.
    let app = spawn_app().await;
    let (mut used, fresh) = (sanctum(12, &[]), drf("drf", &[], false));
    let long_ago = Utc::now() - TimeDelta::days(10);
    used.line["request_count"] = json!(40);
    used.line["last_used_at"] = json!(long_ago);
    let report = imported(
        &app,
        &app.admin_token,
        &[used.line.clone(), fresh.line.clone()],
    )
    .await;
    let started = Utc::now();

    // Act: three verifications of one (over REST, gRPC and the gateway), two of the other,
    // and impostors, which count for nothing.
    let mut c = grpc(&app).await;
    app.verify(&used.plaintext, &[]).await;
    validate(&mut c, &used.plaintext, &[]).await;
    check(&app, &used.plaintext, "").await;
    app.verify(&fresh.plaintext, &[]).await;
    app.verify(&fresh.plaintext, &[]).await;
    for impostor in used.impostors.iter().chain(&fresh.impostors) {
        app.verify(impostor, &[]).await;
    }

    // Assert
    let used_view = view_counting(&app, &id_of(&report, 1), 43).await;
    let fresh_view = view_counting(&app, &id_of(&report, 2), 2).await;
    assert_eq!(used_view["request_count"], 43, "{used_view}");
    assert!(time(&used_view["last_used_at"]) >= started - TimeDelta::seconds(1));
    assert_eq!(fresh_view["request_count"], 2, "{fresh_view}");
    assert!(time(&fresh_view["last_used_at"]) >= started - TimeDelta::seconds(1));
}

// Files that are refused, and files imported twice.

/// A file with one good key (line 1) and a refusal on every other line but the blank line 8:
/// returns it with the good key and the reasons' keywords by line.
fn malformed_file(taken_name: &'static str) -> (String, Legacy, Vec<(usize, &'static str)>) {
    let good = laravel(&[]);
    let short_hash = {
        let mut l = laravel(&[]).line;
        l["hash"] = json!(&l["hash"].as_str().unwrap()[1..]);
        l["name"] = json!("short hash");
        l
    };
    let unknown_field = {
        let mut l = flask(&[]).line;
        l["team"] = json!("payments");
        l
    };
    let duplicate = {
        let mut l = good.line.clone();
        l["name"] = json!("same hash again");
        l
    };
    let taken = {
        let mut l = go_org_key(&[]).line;
        l["name"] = json!(taken_name);
        l
    };
    let no_id = {
        let mut l = ibex(&[]).line;
        l.as_object_mut().unwrap().remove("id");
        l
    };
    let plaintext_as_hash = {
        let k = drf("plaintext as hash", &[], false);
        let mut l = k.line;
        l["hash"] = json!(k.plaintext);
        l
    };
    let text = [
        good.line.to_string(),
        short_hash.to_string(),
        unknown_field.to_string(),
        duplicate.to_string(),
        taken.to_string(),
        "{\"scheme\": \"sha256\", \"hash\": ".to_string(),
        no_id.to_string(),
        String::new(),
        plaintext_as_hash.to_string(),
    ]
    .join("\n");
    let reasons = vec![
        (2, "64 hexadecimal"),
        (3, "team"),
        (4, "line 1"),
        (5, taken_name),
        (6, "JSON"),
        (7, "id is required"),
        (9, "128 hexadecimal"),
    ];
    (text, good, reasons)
}

#[tokio::test]
async fn a_malformed_file_is_refused_whole_over_the_api_naming_each_bad_line() {
    // Arrange
    let app = spawn_app().await;
    app.token_with(&app.admin_token, "taken", &[]).await;
    let (text, good, reasons) = malformed_file("taken");
    let tokens_before = ids(&tokens(&app, "").await);
    let events_before = audit(&app, "").await.len();

    // Act
    let res = import_raw(&app, &app.admin_token, "", text.clone()).await;
    let dry = import_raw(&app, &app.admin_token, "?dry_run=true", text).await;

    // Assert
    let body = error_of(res, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["error"]["code"], "invalid_argument");
    let message = body["error"]["message"].as_str().unwrap();
    let refused: Vec<&str> = message.split("; ").collect();
    for (line, why) in &reasons {
        let said = refused
            .iter()
            .find(|r| r.contains(&format!("line {line}: ")))
            .unwrap_or_else(|| panic!("line {line} not named: {message}"));
        assert!(said.contains(why), "line {line} should say {why:?}: {said}");
    }
    assert!(!message.contains("line 1: "), "{message}");
    assert!(!message.contains("line 8: "), "{message}");
    assert_eq!(
        error_of(dry, StatusCode::BAD_REQUEST).await,
        body,
        "a dry run refuses the same lines"
    );
    assert_eq!(ids(&tokens(&app, "").await), tokens_before);
    assert_eq!(audit(&app, "").await.len(), events_before);
    assert_eq!(app.verify(&good.plaintext, &[]).await["code"], "INVALID");
}

#[tokio::test]
async fn a_malformed_file_is_refused_whole_by_the_cli_which_exits_1_and_lists_the_lines() {
    // Arrange
    let app = spawn_app().await;
    app.token_with(&app.admin_token, "taken", &[]).await;
    let (text, _, reasons) = malformed_file("taken");
    let tokens_before = ids(&tokens(&app, "").await);
    let events_before = audit(&app, "").await.len();

    // Act
    let out = cli_import(
        &app,
        &["-", "--org-id", &app.org_id.to_string()],
        Some(&text),
    );

    // Assert
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for (line, why) in &reasons {
        let said = err
            .lines()
            .find(|l| l.starts_with(&format!("line {line}: refused: ")))
            .unwrap_or_else(|| panic!("line {line} not named: {err}"));
        assert!(said.contains(why), "line {line} should say {why:?}: {said}");
    }
    assert!(!err.contains("line 1: refused"), "{err}");
    assert!(
        err.contains("0 imported, 0 already present, 7 refused"),
        "{err}"
    );
    assert_eq!(ids(&tokens(&app, "").await), tokens_before);
    assert_eq!(audit(&app, "").await.len(), events_before);
}

#[tokio::test]
async fn importing_the_same_file_again_changes_nothing() {
    // Arrange
    let app = spawn_app().await;
    let keys = every_source(&["tokens:read"], false);
    let lines = lines_of(&keys);
    let first = imported(&app, &app.admin_token, &lines).await;
    let tokens_before = ids(&tokens(&app, "").await);
    let events_before = audit(&app, "").await.len();

    // Act
    let again = imported(&app, &app.admin_token, &lines).await;
    let file = keys_file(&app, "again.jsonl", &lines);
    let by_cli = cli_import(&app, &[&file, "--org-id", &app.org_id.to_string()], None);

    // Assert
    assert_eq!(first["imported"], 6);
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["already_present"], 6);
    assert_eq!(again["written"], false);
    assert_eq!(again["refused"], json!([]));
    for line in 1..=6 {
        assert_eq!(again["keys"][line - 1]["line"], line);
        assert_eq!(again["keys"][line - 1]["status"], "already_present");
    }
    assert!(by_cli.status.success(), "{}", stderr(&by_cli));
    assert!(
        stderr(&by_cli).contains("0 imported, 6 already present, 0 refused"),
        "{}",
        stderr(&by_cli)
    );
    assert_eq!(ids(&tokens(&app, "").await), tokens_before);
    assert_eq!(audit(&app, "").await.len(), events_before);
    for key in &keys {
        assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "VALID");
    }
}

#[tokio::test]
async fn a_re_import_reports_the_ids_of_the_tokens_already_there() {
    // Arrange: keys whose source had no UUID for them (Latchkey gave them one).
    let app = spawn_app().await;
    let lines = [laravel(&[]).line, sanctum(6, &[]).line];
    let first = imported(&app, &app.admin_token, &lines).await;

    // Act
    let again = imported(&app, &app.admin_token, &lines).await;

    // Assert: each key's id is one a client can look up.
    for line in 1..=2 {
        let id = id_of(&again, line);
        assert_eq!(id, id_of(&first, line), "line {line}: {again}");
        let res = app.get(&format!("/v1/tokens/{id}"), &app.admin_token).await;
        assert_eq!(res.status(), StatusCode::OK, "line {line}");
    }
}

#[tokio::test]
async fn a_dry_run_validates_and_reports_but_writes_nothing() {
    // Arrange: keys of the same schemes already imported, and the new keys presented once
    // before they exist (the server remembers digests it did not find).
    let app = spawn_app().await;
    let (mut earlier, mut earlier_sanctum) = (laravel(&[]).line, sanctum(4, &[]).line);
    earlier["name"] = json!("earlier laravel");
    earlier_sanctum["name"] = json!("earlier sanctum");
    imported(&app, &app.admin_token, &[earlier, earlier_sanctum]).await;
    let keys = [laravel(&[]), sanctum(5, &[])];
    let lines = lines_of(&keys);
    for key in &keys {
        assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "INVALID");
    }
    let tokens_before = ids(&tokens(&app, "").await);
    let events_before = audit(&app, "").await.len();
    let file = keys_file(&app, "dry.jsonl", &lines);

    // Act
    let res = import(&app, &app.admin_token, "?dry_run=true", &lines).await;
    let by_cli = cli_import(&app, &[&file, "--org-name", "default", "--dry-run"], None);
    let tokens_after_dry_runs = ids(&tokens(&app, "").await);
    let events_after_dry_runs = audit(&app, "").await.len();
    let real = imported(&app, &app.admin_token, &lines).await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["written"], false);
    assert_eq!(report["imported"], 2);
    assert!(by_cli.status.success(), "{}", stderr(&by_cli));
    assert!(
        stderr(&by_cli).contains(
            "dry run, nothing written: 2 would be imported, 0 already present, 0 refused"
        ),
        "{}",
        stderr(&by_cli)
    );
    assert_eq!(tokens_after_dry_runs, tokens_before);
    assert_eq!(events_after_dry_runs, events_before);
    assert_eq!(real["imported"], 2);
    for key in &keys {
        assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "VALID");
    }
}

// Who may import what, and bodies that are not imports.

#[tokio::test]
async fn importing_needs_a_bearer_with_org_admin() {
    // Arrange
    let app = spawn_app().await;
    let (creator, _) = app
        .token_with(
            &app.admin_token,
            "creator",
            &["tokens:create", "tokens:read", "tokens:revoke"],
        )
        .await;
    let key = laravel(&[]);
    let tokens_before = ids(&tokens(&app, "").await);

    // Act
    let anonymous = app
        .client
        .post(format!("{}/v1/tokens/import", app.address))
        .header("content-type", "application/x-ndjson")
        .body(key.line.to_string())
        .send()
        .await
        .unwrap();
    let garbage_bearer = import(&app, "lk_pat_garbage", "", std::slice::from_ref(&key.line)).await;
    let without_org_admin = import(&app, &creator, "", std::slice::from_ref(&key.line)).await;

    // Assert
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    error_of(anonymous, StatusCode::UNAUTHORIZED).await;
    error_of(garbage_bearer, StatusCode::UNAUTHORIZED).await;
    let denied = error_of(without_org_admin, StatusCode::FORBIDDEN).await;
    assert_eq!(denied["error"]["code"], "permission_denied");
    assert_eq!(ids(&tokens(&app, "").await), tokens_before);
    assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "INVALID");
}

#[tokio::test]
async fn an_org_admin_imports_only_into_its_own_org() {
    // Arrange: org B's admin, and org A (the app's own).
    let app = spawn_app().await;
    let (org_b, admin_b) = app.second_org("acme").await;
    let org_a = app.org_id.to_string();
    let (into_a, line_in_a, into_b, by_platform) = (
        laravel(&[]),
        flask(&[]),
        sanctum(9, &[]),
        drf("drf", &[], true),
    );
    let mut line_in_a_line = line_in_a.line.clone();
    line_in_a_line["org_id"] = json!(org_a);
    let tokens_before = ids(&tokens(&app, "").await);

    // Act
    let query_a = import(
        &app,
        &admin_b,
        &format!("?org_id={org_a}"),
        std::slice::from_ref(&into_a.line),
    )
    .await;
    let query_nowhere = import(
        &app,
        &admin_b,
        &format!("?org_id={}", uuid::Uuid::now_v7()),
        std::slice::from_ref(&into_a.line),
    )
    .await;
    let lines_a = import(&app, &admin_b, "", &[line_in_a_line]).await;
    let own = import(&app, &admin_b, "", std::slice::from_ref(&into_b.line)).await;
    let platform = import(
        &app,
        &app.admin_token,
        &format!("?org_id={org_b}"),
        std::slice::from_ref(&by_platform.line),
    )
    .await;

    // Assert: org A is out of reach, exactly like an org that does not exist.
    let cross = error_of(query_a, StatusCode::NOT_FOUND).await;
    assert_eq!(cross["error"]["code"], "not_found");
    assert_eq!(cross, error_of(query_nowhere, StatusCode::NOT_FOUND).await);
    let refused = error_of(lines_a, StatusCode::BAD_REQUEST).await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1: org not found"),
        "{refused}"
    );
    assert_eq!(ids(&tokens(&app, "").await), tokens_before);
    for key in [&into_a, &line_in_a] {
        assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "INVALID");
    }
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(platform.status(), StatusCode::OK);
    for key in [&into_b, &by_platform] {
        let v = app.verify(&key.plaintext, &[]).await;
        assert_eq!(v["code"], "VALID", "{}", key.name);
        assert_eq!(v["org_id"], org_b.to_string(), "{}", key.name);
    }
}

#[tokio::test]
async fn an_import_cannot_grant_bits_the_caller_lacks() {
    // Arrange: org B's admin holds org:admin but not platform:admin.
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let mut by_scope = laravel(&[]);
    by_scope.line["scopes"] = json!(["platform:admin"]);
    let mut by_bits = flask(&[]);
    by_bits.line["permissions"] = json!(1u64 << 6);
    let mut unknown = go_org_key(&[]);
    unknown.line["scopes"] = json!(["no:such"]);
    let allowed = sanctum(2, &["tokens:read", "org:admin"]);

    // Act
    let res = import(
        &app,
        &admin_b,
        "",
        &[
            by_scope.line.clone(),
            by_bits.line.clone(),
            unknown.line.clone(),
            allowed.line.clone(),
        ],
    )
    .await;
    let alone = import(&app, &admin_b, "", std::slice::from_ref(&allowed.line)).await;

    // Assert
    let body = error_of(res, StatusCode::BAD_REQUEST).await;
    let message = body["error"]["message"].as_str().unwrap();
    for line in 1..=3 {
        assert!(message.contains(&format!("line {line}: ")), "{message}");
    }
    assert!(!message.contains("line 4: "), "{message}");
    for key in [&by_scope, &by_bits, &unknown] {
        assert_eq!(app.verify(&key.plaintext, &[]).await["code"], "INVALID");
    }
    assert_eq!(alone.status(), StatusCode::OK);
    let v = app.verify(&allowed.plaintext, &["org:admin"]).await;
    assert_eq!(v["code"], "VALID");
}

#[tokio::test]
async fn a_body_that_is_not_an_import_is_a_400() {
    // Arrange
    let app = spawn_app().await;
    let line = laravel(&[]).line.to_string();
    let send = |content_type: Option<&'static str>, body: Vec<u8>, query: &'static str| {
        let mut rb = app
            .client
            .post(format!("{}/v1/tokens/import{query}", app.address))
            .bearer_auth(&app.admin_token)
            .body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        async move { rb.send().await.unwrap() }
    };

    // Act
    let cases = [
        ("no content type", send(None, line.clone().into(), "").await),
        (
            "html",
            send(Some("text/html"), line.clone().into(), "").await,
        ),
        (
            "form",
            send(
                Some("application/x-www-form-urlencoded"),
                line.clone().into(),
                "",
            )
            .await,
        ),
        (
            "empty",
            send(Some("application/x-ndjson"), Vec::new(), "").await,
        ),
        (
            "blank lines only",
            send(Some("application/x-ndjson"), b"\n  \n".to_vec(), "").await,
        ),
        (
            "an object as the array",
            send(Some("application/json"), line.clone().into(), "").await,
        ),
        (
            "JSON Lines as the array",
            send(
                Some("application/json"),
                format!("{line}\n{line}").into(),
                "",
            )
            .await,
        ),
        (
            "not UTF-8",
            send(
                Some("application/x-ndjson"),
                vec![0xff, 0xfe, 0x00, 0x7b],
                "",
            )
            .await,
        ),
        (
            "unknown query parameter",
            send(
                Some("application/x-ndjson"),
                line.clone().into(),
                "?dryrun=true",
            )
            .await,
        ),
        (
            "dry_run not a boolean",
            send(
                Some("application/x-ndjson"),
                line.clone().into(),
                "?dry_run=maybe",
            )
            .await,
        ),
        (
            "org_id not a uuid",
            send(
                Some("application/x-ndjson"),
                line.clone().into(),
                "?org_id=acme",
            )
            .await,
        ),
    ];

    // Assert
    for (case, res) in cases {
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{case}: {body}");
    }
    assert_eq!(tokens(&app, "&format=sha256").await.len(), 0);
}

#[tokio::test]
async fn no_hash_or_plaintext_reaches_the_logs_the_audit_log_or_an_error_message() {
    // Arrange: keys of every source imported, presented, rotated, revoked; and refused files
    // whose lines carry hashes and plaintexts where they do not belong.
    let app = spawn_app().await;
    let keys = every_source(&["tokens:read"], false);
    let report = imported(&app, &app.admin_token, &lines_of(&keys)).await;
    let mut c = grpc(&app).await;
    for key in &keys {
        app.verify(&key.plaintext, &[]).await;
        validate(&mut c, &key.plaintext, &[]).await;
        check(&app, &key.plaintext, "").await;
        app.get("/v1/tokens", &key.plaintext).await;
        for impostor in &key.impostors {
            app.verify(impostor, &[]).await;
            check(&app, impostor, "").await;
        }
    }
    app.delete(
        &format!("/v1/tokens/{}", id_of(&report, 1)),
        &app.admin_token,
    )
    .await;
    app.post(
        &format!("/v1/tokens/{}/rotate", id_of(&report, 2)),
        &app.admin_token,
        json!({}),
    )
    .await;
    let (other, extra) = (laravel(&[]), drf("drf leak", &[], true));
    let plaintext_column = {
        let mut l = other.line.clone();
        l["token"] = json!(other.plaintext);
        l
    };
    let plaintext_as_hash = {
        let mut l = extra.line.clone();
        l["hash"] = json!(extra.plaintext);
        l
    };
    // Digests in fields of another type, whose parse errors could quote them.
    let hash_as_scopes = {
        let mut l = laravel(&[]).line;
        l["name"] = json!("hash as scopes");
        l["scopes"] = keys[0].line["hash"].clone();
        l
    };
    let hash_as_permissions = {
        let mut l = laravel(&[]).line;
        l["name"] = json!("hash as permissions");
        l["permissions"] = keys[3].line["hash"].clone();
        l
    };
    let refused_lines = [
        keys[0].line.clone(),
        keys[0].line.clone(),
        plaintext_column,
        plaintext_as_hash,
        hash_as_scopes,
        hash_as_permissions,
        keys[5].line.clone(),
    ];

    // Act
    let refused = import(&app, &app.admin_token, "", &refused_lines).await;
    let message = error_of(refused, StatusCode::BAD_REQUEST).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    let by_cli = cli_import(
        &app,
        &["-", "--org-name", "default", "--json"],
        Some(&jsonl(&refused_lines)),
    );
    let events = serde_json::to_string(&audit(&app, "").await).unwrap();
    let listed = serde_json::to_string(&tokens(&app, "").await).unwrap();

    // Assert
    let mut secrets: Vec<String> = Vec::new();
    for key in keys.iter().chain([&other, &extra]) {
        secrets.push(key.plaintext.clone());
        secrets.extend(key.impostors.iter().cloned());
        let hash = key.line["hash"].as_str().unwrap();
        secrets.push(hash.trim_start_matches("sha512$$").to_lowercase());
    }
    let logs = app.logs();
    for (place, text) in [
        ("server logs", &logs),
        ("audit events", &events),
        ("token list", &listed),
        ("error message", &message),
        ("cli stderr", &stderr(&by_cli)),
        ("cli stdout", &stdout(&by_cli)),
    ] {
        for secret in &secrets {
            assert!(
                !text.to_lowercase().contains(&secret.to_lowercase()),
                "{place} shows {secret}"
            );
        }
    }
    for line in 2..=6 {
        assert!(message.contains(&format!("line {line}: ")), "{message}");
    }
    assert_eq!(by_cli.status.code(), Some(1));
    assert!(
        logs.contains("token_imported"),
        "the audit events are logged"
    );
}

#[tokio::test]
async fn a_key_already_imported_in_another_org_is_refused_without_naming_the_org() {
    // Arrange: a key imported in org A; org B's admin holds the same hash.
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let key = laravel(&[]);
    imported(&app, &app.admin_token, std::slice::from_ref(&key.line)).await;
    let audit_before = audit(&app, "").await.len();

    // Act: org B imports the same hash; org A imports it again under another given id.
    let into_b = import(&app, &admin_b, "", std::slice::from_ref(&key.line)).await;
    let mut other_id = key.line.clone();
    other_id["id"] = json!(uuid::Uuid::now_v7());
    let other_id_in_a = import(&app, &app.admin_token, "", &[other_id]).await;

    // Assert: refused, with one reason that names no org; the key stays in org A.
    for res in [into_b, other_id_in_a] {
        let e = error_of(res, StatusCode::BAD_REQUEST).await;
        let message = e["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("line 1: another token already has this id or this hash"),
            "{message}"
        );
        assert!(!message.contains(&app.org_id.to_string()));
    }
    let v = app.verify(&key.plaintext, &[]).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["org_id"], app.org_id.to_string());
    assert_eq!(audit(&app, "").await.len(), audit_before);
}

#[tokio::test]
async fn a_catch_up_import_revokes_the_keys_the_source_revoked_since_and_changes_nothing_else() {
    // Arrange: two live keys imported; then the source revokes one of them.
    let app = spawn_app().await;
    let (kept, gone) = (laravel(&[]), flask(&[]));
    let first = imported(
        &app,
        &app.admin_token,
        &[kept.line.clone(), gone.line.clone()],
    )
    .await;
    let gone_id = id_of(&first, 2);
    assert_eq!(app.verify(&gone.plaintext, &[]).await["code"], "VALID");
    let mut revoked_line = gone.line.clone();
    revoked_line["revoked_at"] = json!("2026-01-02T03:04:05Z");
    let lines = [kept.line.clone(), revoked_line];

    // Act: a dry run, the catch-up import, and the same import once more.
    let dry = import(&app, &app.admin_token, "?dry_run=true", &lines).await;
    let dry: Value = dry.json().await.unwrap();
    let still_valid = app.verify(&gone.plaintext, &[]).await;
    let catch_up = imported(&app, &app.admin_token, &lines).await;
    let again = imported(&app, &app.admin_token, &lines).await;

    // Assert
    assert_eq!(dry["revoked"], 1, "{dry}");
    assert_eq!(still_valid["code"], "VALID");
    assert_eq!(catch_up["revoked"], 1, "{catch_up}");
    assert_eq!(catch_up["already_present"], 2);
    assert_eq!(catch_up["keys"][1]["status"], "revoked");
    assert_eq!(catch_up["keys"][1]["id"], gone_id.as_str());
    assert_eq!(app.verify(&gone.plaintext, &[]).await["code"], "INVALID");
    assert_eq!(app.verify(&kept.plaintext, &[]).await["code"], "VALID");
    assert_eq!(again["revoked"], 0, "{again}");
    assert_eq!(again["keys"][1]["status"], "already_present");
    let events = audit(&app, &format!("&token_id={gone_id}&action=token_revoked")).await;
    assert_eq!(events.len(), 1, "{events:?}");
}
