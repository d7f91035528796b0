//! docs/migrating.md, run as written. For each system the guide moves in from, the test builds
//! that system's table in a scratch database (SQLite through the `sqlite3` command, PostgreSQL
//! through `psql`) and fills it with keys whose plaintexts it makes in that system's format,
//! hashed the way that system stores them. Then the guide's export and import run as written,
//! against a server started with the guide's config, and the plaintexts are verified: the live
//! keys VALID with their scopes, the revoked (or expired) one INVALID. Nothing of the guide is
//! copied here: the tables the guide states it assumes, its config, its exports and its commands
//! are read from the page. Tests whose source database is PostgreSQL have `postgres` in their name.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};
use uuid::Uuid;

use crate::helpers::{BIN, TestApp, TestDatabase, postgres_admin_url, spawn_app_with};

const PAGE: &str = "docs/migrating.md";

const SCOPES: &str = "## Declare the scopes";
const IMPORTING: &str = "## Importing";
const IMPORT_FILE: &str = "## The import file";
const IBEX: &str = "## From ibex (Go, Argon2id)";
const LARAVEL: &str = "## From a Laravel token package (tok_ keys)";
const FLASK: &str = "## From a Flask platform (spci_ keys)";
const GO_ORG_KEYS: &str = "## From Go org keys";
const DRF: &str = "## From djangorestframework-api-key";
const SANCTUM: &str = "## From Laravel Sanctum";
const ROTATING: &str = "## Rotating onto native tokens";

/// The sections whose ```sh block a test below runs, in the page's order.
const RUN: [&str; 8] = [
    IMPORTING,
    IBEX,
    LARAVEL,
    FLASK,
    GO_ORG_KEYS,
    DRF,
    SANCTUM,
    ROTATING,
];

/// The sections whose ```sql block is the table the guide assumes, built by a test below.
const ASSUMED_TABLES: [&str; 4] = [IBEX, LARAVEL, FLASK, GO_ORG_KEYS];

/// The ibex service's local-development key: Argon2id (m=64 MiB, t=3, p=4) of the whole key.
const IBEX_DEV_ID: &str = "00000000-0000-0000-0000-000000000004";
const IBEX_DEV_KEY: &str = "ibex_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY";
const IBEX_DEV_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$v7OU5izBPGnx4P47/nOoGQ$Ozd/9sqIqvtVBwk5fdfTGnXGkmflQej0xtooVgaAxh8";

// ---- The page ----

fn page() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(PAGE))
        .unwrap_or_else(|e| panic!("{PAGE}: {e}"))
}

/// The text under `heading` (a whole `## ` line of the page), up to the next `## ` heading.
fn section(heading: &str) -> String {
    let text = page();
    let start = text
        .lines()
        .scan(0, |at, line| {
            let here = *at;
            *at += line.len() + 1;
            Some((here, line))
        })
        .find(|(_, line)| *line == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?} in {PAGE}"))
        .0;
    let body = &text[start + heading.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].to_string()
}

/// The fenced blocks of `lang` (```sh, ```sql, ...) in a text, unindented ones only.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("\n```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let after = &rest[i + fence.len()..];
        let len = after.find("\n```").expect("the block's end") + 1;
        out.push(after[..len].to_string());
        rest = &after[len..];
    }
    out
}

/// The one ```lang block of the section under `heading`.
fn block(heading: &str, lang: &str) -> String {
    let found = blocks(&section(heading), lang);
    assert_eq!(
        found.len(),
        1,
        "{PAGE}: the section {heading:?} has one ```{lang} block"
    );
    found.into_iter().next().unwrap()
}

// ---- Tools, fixtures and digests ----

/// Asserts that a tool the guide's commands use is installed: without it a test fails (a test
/// that did not run is never reported as passed), saying how to get it or how to leave it out.
fn need(tool: &str, package: &str, skip: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "docs/migrating.md's commands need {tool}: `apt-get install -y --no-install-recommends \
         {package}` (bash .ci/run installs it), or leave these tests out with `cargo test -- \
         --skip {skip}`"
    );
}

fn need_sqlite3() {
    need("sqlite3", "sqlite3", "migrating_docs::");
}

fn need_psql() {
    need("psql", "postgresql-client", "postgres");
}

/// Runs `program args` with `input` on stdin; asserts success.
fn piped(program: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed on:\n{input}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs SQL on a scratch SQLite database (created if missing).
fn sqlite(db: &Path, sql: &str) {
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    piped("sqlite3", &["-bail", db.to_str().unwrap()], sql);
}

/// Runs SQL on a scratch PostgreSQL database.
fn psql(url: &str, sql: &str) {
    piped("psql", &[url, "-XAtq", "-v", "ON_ERROR_STOP=1"], sql);
}

/// A fresh PostgreSQL database for the old system's tables, on the test server.
async fn source_database(test: &str) -> TestDatabase {
    need_psql();
    TestDatabase::create(&postgres_admin_url(test)).await
}

/// A SQL string literal.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("OS randomness");
    bytes
        .iter()
        .map(|b| alphabet[usize::from(*b) % alphabet.len()] as char)
        .collect()
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// 32 random bytes in base64url without padding (Go's `base64.RawURLEncoding`, Python's
/// `secrets.token_urlsafe(32)`): 43 characters.
fn base64url_32() -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 33];
    getrandom::fill(&mut bytes[..32]).expect("OS randomness");
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(B64[((n >> shift) & 63) as usize] as char);
        }
    }
    out.truncate(43);
    out
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

// ---- Running the guide ----

/// A server started with the guide's config, and the reader's working folder, which holds that
/// config as `latchkey.toml` (the guide's commands name it so).
struct Guide {
    app: TestApp,
    dir: tempfile::TempDir,
}

impl Guide {
    async fn start() -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let config = dir.path().join("latchkey.toml");
        std::fs::write(&config, block(SCOPES, "toml")).unwrap();
        let app = spawn_app_with(&["--config", config.to_str().unwrap()]).await;
        assert!(!app.admin_token.is_empty(), "the bootstrap token");
        Guide { app, dir }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    /// Runs `script` with bash (`-euo pipefail`) in the working folder, as a reader runs it in
    /// a terminal: stdout and stderr in one stream, `latchkey` on the PATH, the server's database
    /// (`LATCHKEY_DATABASE_URL`), address (`LATCHKEY_URL`, and in place of `127.0.0.1:8080`)
    /// and admin token (`LATCHKEY_TOKEN`) set, and `env` besides. Asserts exit status 0 and every
    /// `# -> ` output the script promises; returns what it printed.
    fn run(&self, script: &str, env: &[(&str, &str)]) -> String {
        let out = self.bash(script, env);
        assert!(
            out.status.success(),
            "script:\n{script}\noutput:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        check_promised_output(script, &printed);
        printed
    }

    fn bash(&self, script: &str, env: &[(&str, &str)]) -> Output {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
        let address = self.app.address.trim_start_matches("http://");
        Command::new("bash")
            .args(["-euo", "pipefail", "-c"])
            .arg(format!(
                "exec 2>&1\n{}",
                script.replace("127.0.0.1:8080", address)
            ))
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("LATCHKEY_DATABASE_URL", &self.app.database_url)
            .env("LATCHKEY_URL", &self.app.address)
            .env("LATCHKEY_TOKEN", &self.app.admin_token)
            .env("RUST_BACKTRACE", "0")
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("LATCHKEY_IMPORT_ORG_ID")
            .env_remove("LATCHKEY_IMPORT_ORG_NAME")
            .envs(env.iter().copied())
            .output()
            .expect("bash")
    }

    /// The server after a command-line import: stopped and started again on its database (a
    /// running server recognises a scheme it had no keys of within a minute; a started one at
    /// once). The admin token stays `self.app.admin_token`.
    async fn restarted(&mut self) -> TestApp {
        assert!(self.app.stop_gracefully(), "a clean stop");
        let config = self.path("latchkey.toml");
        self.app
            .restart(&["--config", config.to_str().unwrap()])
            .await
    }

    /// The token view of `id`, read with the admin token.
    async fn view(&self, app: &TestApp, id: &str) -> Value {
        let res = app
            .get(&format!("/v1/tokens/{id}"), &self.app.admin_token)
            .await;
        assert_eq!(res.status(), StatusCode::OK, "token {id}");
        res.json().await.unwrap()
    }
}

/// The outputs a script promises in its `# -> ...` lines, in order. A promise without `…`
/// must appear as written; in one with `…` (standing for ids), every other word must appear,
/// in order.
fn check_promised_output(script: &str, printed: &str) {
    let mut at = 0;
    for line in script.lines() {
        let Some(promised) = line.trim_start().strip_prefix("# -> ") else {
            continue;
        };
        if !promised.contains('…') {
            match printed[at..].find(promised) {
                Some(i) => at += i + promised.len(),
                None => panic!("the guide promises {promised:?} after byte {at} of:\n{printed}"),
            }
            continue;
        }
        for word in promised.split_whitespace().filter(|w| !w.contains('…')) {
            match printed[at..].find(word) {
                Some(i) => at += i + word.len(),
                None => panic!(
                    "the guide promises {word:?} (from {promised:?}) after byte {at} of:\n{printed}"
                ),
            }
        }
    }
}

/// Verifies `token` through REST, requiring `scopes`: VALID, holding exactly `scopes`. Returns
/// the answer.
async fn assert_valid(app: &TestApp, what: &str, token: &str, scopes: &[&str]) -> Value {
    let v = app.verify(token, scopes).await;
    assert_eq!(v["code"], "VALID", "{what}: {v}");
    let mut held: Vec<&str> = v["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    held.sort_unstable();
    let mut want = scopes.to_vec();
    want.sort_unstable();
    assert_eq!(held, want, "{what}: {v}");
    v
}

async fn assert_invalid(app: &TestApp, what: &str, token: &str) {
    let v = app.verify(token, &[]).await;
    assert_eq!(v["code"], "INVALID", "{what}: {v}");
}

/// The gateway check with `token` as the bearer: its status.
async fn gateway_check(app: &TestApp, token: &str) -> StatusCode {
    app.client
        .get(format!("{}/v1/auth/check", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

// ---- The page as a whole ----

#[test]
fn every_sh_and_assumed_table_block_of_the_guide_is_run_by_a_test() {
    // Arrange
    let text = page();

    // Act: the `## ` heading above each ```sh and ```sql block.
    let mut heading = "";
    let mut sh = Vec::new();
    let mut sql = Vec::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            heading = line;
        } else if line == "```sh" {
            sh.push(heading);
        } else if line == "```sql" {
            sql.push(heading);
        }
    }

    // Assert
    assert_eq!(
        sh, RUN,
        "every ```sh block of {PAGE} is run by a test (RUN), one per section"
    );
    assert_eq!(
        sql, ASSUMED_TABLES,
        "every ```sql block of {PAGE} is a table a test builds (ASSUMED_TABLES)"
    );
}

// ---- Each system ----

#[tokio::test]
async fn ibex_keys_move_in_as_the_guide_says_from_postgres() {
    // Arrange: ibex's table with its development key, a service key and a revoked key, each an
    // Argon2id hash of the whole key (the last two with Latchkey's own Argon2id parameters), and
    // bits 16 and 17 (reports:read, reports:write in the guide's config) as their permissions.
    let source = source_database("ibex_keys_move_in_as_the_guide_says_from_postgres").await;
    psql(&source.url, &block(IBEX, "sql"));
    let svc_id = Uuid::now_v7();
    let svc_key = format!("ibex_svc_{svc_id}_{}", random_from(ALNUM, 32));
    let old_id = Uuid::now_v7();
    let old_key = format!("ibex_pat_{old_id}_{}", random_from(ALNUM, 32));
    let phc = |key: &str| latchkey::token::hash::argon2id_phc(key.as_bytes()).unwrap();
    let org = Uuid::now_v7();
    psql(
        &source.url,
        &format!(
            "INSERT INTO tokens (id, org_id, name, type, permissions, token_hash, created_at, last_used_at) \
             VALUES ('{IBEX_DEV_ID}', '{org}', 'dev laptop', 1, {read}, {dev}, \
                     now() - interval '30 days', now() - interval '1 day');\n\
             INSERT INTO tokens (id, org_id, name, type, permissions, token_hash, expires_at) \
             VALUES ('{svc_id}', '{org}', 'CI / deploy', 2, {read_write}, {svc}, now() + interval '90 days');\n\
             INSERT INTO tokens (id, org_id, name, type, permissions, token_hash, revoked_at) \
             VALUES ('{old_id}', '{org}', 'old laptop', 1, {read}, {old}, now() - interval '1 day');",
            read = 1u64 << 16,
            read_write = (1u64 << 16) | (1u64 << 17),
            dev = q(IBEX_DEV_HASH),
            svc = q(&phc(&svc_key)),
            old = q(&phc(&old_key)),
        ),
    );
    let mut guide = Guide::start().await;

    // Act
    guide.run(&block(IBEX, "sh"), &[("IBEX_DATABASE_URL", &source.url)]);
    let app = guide.restarted().await;

    // Assert: the keys verify as ibex issued them, with the ibex ids as token ids.
    let dev = assert_valid(&app, "ibex dev key", IBEX_DEV_KEY, &["reports:read"]).await;
    assert_eq!(dev["token_id"], IBEX_DEV_ID);
    assert_eq!(
        gateway_check(&app, IBEX_DEV_KEY).await,
        StatusCode::NO_CONTENT
    );
    let svc = assert_valid(
        &app,
        "ibex svc key",
        &svc_key,
        &["reports:read", "reports:write"],
    )
    .await;
    assert_eq!(svc["token_id"], svc_id.to_string());
    assert_invalid(&app, "revoked ibex key", &old_key).await;
    let view = guide.view(&app, IBEX_DEV_ID).await;
    assert_eq!(view["format"], "argon2id-embedded-uuid", "{view}");
    assert_eq!(view["name"], "dev laptop 00000000", "{view}");
    let view = guide.view(&app, &svc_id.to_string()).await;
    assert_eq!(view["type"], "svc", "{view}");
    assert_eq!(view["metadata"]["ibex_org_id"], org.to_string(), "{view}");
    assert!(
        view["name"].as_str().unwrap().starts_with("CI - deploy "),
        "{view}"
    );
    assert_eq!(
        guide.view(&app, &old_id.to_string()).await["state"],
        "revoked"
    );
}

#[tokio::test]
async fn laravel_token_package_keys_move_in_as_the_guide_says() {
    need_sqlite3();
    // Arrange: the package's table in Laravel's default SQLite file, with two live keys (one
    // with a name Latchkey does not allow) and a revoked one.
    let mut guide = Guide::start().await;
    let db = guide.path("database/database.sqlite");
    sqlite(&db, &block(LARAVEL, "sql"));
    let keys: Vec<String> = (0..3)
        .map(|_| format!("tok_{}", random_from(HEX, 64)))
        .collect();
    sqlite(
        &db,
        &format!(
            "INSERT INTO api_tokens (id, user_id, name, token_hash, abilities, created_at, last_used_at) \
             VALUES (41, 7, 'CI deploy', '{}', '[\"reports:read\"]', '2025-01-15 10:00:00', '2026-01-02 03:04:05');\n\
             INSERT INTO api_tokens (id, user_id, name, token_hash, abilities, created_at, expires_at) \
             VALUES (42, 7, 'Zoë''s script', '{}', '[\"reports:read\",\"reports:write\"]', \
                     '2025-02-01 08:00:00', datetime('now', '+1 year'));\n\
             INSERT INTO api_tokens (id, user_id, name, token_hash, created_at, revoked_at) \
             VALUES (43, 8, 'old', '{}', '2024-06-01 12:00:00', datetime('now', '-1 day'));",
            sha256_hex(&keys[0]),
            sha256_hex(&keys[1]),
            sha256_hex(&keys[2]),
        ),
    );

    // Act: the guide's block, then its import once more (it promises that changes nothing).
    guide.run(&block(LARAVEL, "sh"), &[]);
    let again = guide.run(
        "latchkey import --config latchkey.toml --org-name default laravel-keys.jsonl",
        &[],
    );
    let app = guide.restarted().await;

    // Assert
    assert!(
        again.contains("0 imported, 3 already present, 0 refused"),
        "{again}"
    );
    let ci = assert_valid(&app, "tok_ key 41", &keys[0], &["reports:read"]).await;
    assert_valid(
        &app,
        "tok_ key 42",
        &keys[1],
        &["reports:read", "reports:write"],
    )
    .await;
    assert_invalid(&app, "revoked tok_ key 43", &keys[2]).await;
    let view = guide.view(&app, ci["token_id"].as_str().unwrap()).await;
    assert_eq!(view["name"], "CI deploy laravel:41", "{view}");
    assert_eq!(view["created_at"], "2025-01-15T10:00:00Z", "{view}");
    assert_eq!(view["format"], "sha256", "{view}");
    assert_eq!(view["metadata"]["laravel_token_id"], 41, "{view}");
    let listed: Value = app
        .get(
            "/v1/tokens?format=sha256&page_size=50",
            &guide.app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["CI deploy laravel:41", "key laravel:42", "old laravel:43"]
    );
}

#[tokio::test]
async fn flask_platform_keys_move_in_as_the_guide_says_from_postgres() {
    // Arrange: a read key, a write key, and a key switched off.
    let source =
        source_database("flask_platform_keys_move_in_as_the_guide_says_from_postgres").await;
    psql(&source.url, &block(FLASK, "sql"));
    let keys: Vec<String> = (0..3).map(|_| format!("spci_{}", base64url_32())).collect();
    psql(
        &source.url,
        &format!(
            "INSERT INTO api_keys (account_id, label, key_hash, access) VALUES (5, 'Reporting bot', '{}', 'read');\n\
             INSERT INTO api_keys (account_id, label, key_hash, access, expires_at) \
             VALUES (5, 'ETL (nightly)', '{}', 'write', now() + interval '1 year');\n\
             INSERT INTO api_keys (account_id, label, key_hash, is_active, updated_at) \
             VALUES (6, 'old', '{}', false, now() - interval '1 day');",
            sha256_hex(&keys[0]),
            sha256_hex(&keys[1]),
            sha256_hex(&keys[2]),
        ),
    );
    let mut guide = Guide::start().await;

    // Act
    guide.run(&block(FLASK, "sh"), &[("FLASK_DATABASE_URL", &source.url)]);
    let app = guide.restarted().await;

    // Assert
    assert_valid(&app, "read key", &keys[0], &["reports:read"]).await;
    let etl = assert_valid(
        &app,
        "write key",
        &keys[1],
        &["reports:read", "reports:write"],
    )
    .await;
    assert_eq!(gateway_check(&app, &keys[1]).await, StatusCode::NO_CONTENT);
    assert_invalid(&app, "inactive key", &keys[2]).await;
    let view = guide.view(&app, etl["token_id"].as_str().unwrap()).await;
    assert_eq!(view["name"], "ETL -nightly- spci:2", "{view}");
    assert_eq!(view["metadata"]["account_id"], 5, "{view}");
}

#[tokio::test]
async fn go_org_keys_move_in_as_the_guide_says_from_postgres() {
    // Arrange: a viewer key, an editor key and a deleted key, stored as raw SHA-256 bytes.
    let source = source_database("go_org_keys_move_in_as_the_guide_says_from_postgres").await;
    psql(&source.url, &block(GO_ORG_KEYS, "sql"));
    let keys: Vec<(Uuid, String)> = (0..3).map(|_| (Uuid::now_v7(), base64url_32())).collect();
    let org = Uuid::now_v7();
    psql(
        &source.url,
        &format!(
            "INSERT INTO org_api_keys (id, org_id, name, hash, role) \
             VALUES ('{}', '{org}', 'grafana', decode('{}', 'hex'), 'viewer');\n\
             INSERT INTO org_api_keys (id, org_id, name, hash, role) \
             VALUES ('{}', '{org}', 'importer', decode('{}', 'hex'), 'editor');\n\
             INSERT INTO org_api_keys (id, org_id, name, hash, role, deleted_at) \
             VALUES ('{}', '{org}', 'gone', decode('{}', 'hex'), 'editor', now() - interval '1 hour');",
            keys[0].0,
            sha256_hex(&keys[0].1),
            keys[1].0,
            sha256_hex(&keys[1].1),
            keys[2].0,
            sha256_hex(&keys[2].1),
        ),
    );
    let mut guide = Guide::start().await;

    // Act
    guide.run(
        &block(GO_ORG_KEYS, "sh"),
        &[("APP_DATABASE_URL", &source.url)],
    );
    let app = guide.restarted().await;

    // Assert: the verify answer's token_id is the key's id in org_api_keys.
    let viewer = assert_valid(&app, "viewer key", &keys[0].1, &["reports:read"]).await;
    assert_eq!(viewer["token_id"], keys[0].0.to_string());
    let editor = assert_valid(
        &app,
        "editor key",
        &keys[1].1,
        &["reports:read", "reports:write"],
    )
    .await;
    assert_eq!(editor["token_id"], keys[1].0.to_string());
    assert_invalid(&app, "deleted key", &keys[2].1).await;
    let view = guide.view(&app, &keys[1].0.to_string()).await;
    assert_eq!(view["type"], "svc", "{view}");
    assert_eq!(view["metadata"]["org_id"], org.to_string(), "{view}");
}

#[tokio::test]
async fn django_api_keys_move_in_as_the_guide_says_from_postgres() {
    // Arrange: djangorestframework-api-key's table (as its migrations make it on PostgreSQL)
    // with two live keys, a revoked one, and one still hashed by Django's password hasher (made
    // by version 2), which the guide's export leaves out.
    let source = source_database("django_api_keys_move_in_as_the_guide_says_from_postgres").await;
    psql(
        &source.url,
        "CREATE TABLE rest_framework_api_key_apikey (
             id varchar(150) PRIMARY KEY,
             created timestamptz NOT NULL,
             name varchar(50) NOT NULL,
             revoked boolean NOT NULL,
             expiry_date timestamptz,
             hashed_key varchar(150) NOT NULL,
             prefix varchar(8) NOT NULL UNIQUE
         );",
    );
    let keys: Vec<(String, String)> = (0..4)
        .map(|_| {
            let prefix = random_from(ALNUM, 8);
            let key = format!("{prefix}.{}", random_from(ALNUM, 32));
            (prefix, key)
        })
        .collect();
    let row = |i: usize, name: &str, revoked: bool, expiry: &str, hashed: String| {
        let (prefix, _) = &keys[i];
        format!(
            "INSERT INTO rest_framework_api_key_apikey VALUES \
             ({}, now() - interval '100 days', {}, {revoked}, {expiry}, {}, {});\n",
            q(&format!("{prefix}.{hashed}")),
            q(name),
            q(&hashed),
            q(prefix),
        )
    };
    let sha512 = |i: usize| format!("sha512$${}", sha512_hex(&keys[i].1));
    let sql = row(0, "metrics exporter", false, "NULL", sha512(0))
        + &row(
            1,
            "partner: ACME",
            false,
            "now() + interval '30 days'",
            sha512(1),
        )
        + &row(2, "old", true, "NULL", sha512(2))
        + &row(
            3,
            "from version 2",
            false,
            "NULL",
            "pbkdf2_sha256$600000$salt$aGFzaA==".into(),
        );
    psql(&source.url, &sql);
    let mut guide = Guide::start().await;

    // Act
    guide.run(&block(DRF, "sh"), &[("DJANGO_DATABASE_URL", &source.url)]);
    let app = guide.restarted().await;

    // Assert
    let exporter = assert_valid(&app, "drf key", &keys[0].1, &["reports:read"]).await;
    assert_valid(&app, "expiring drf key", &keys[1].1, &["reports:read"]).await;
    assert_invalid(&app, "revoked drf key", &keys[2].1).await;
    assert_invalid(&app, "a version 2 key, left out", &keys[3].1).await;
    let view = guide
        .view(&app, exporter["token_id"].as_str().unwrap())
        .await;
    assert_eq!(
        view["name"],
        format!("metrics exporter drf:{}", keys[0].0),
        "{view}"
    );
    assert_eq!(view["format"], "sha512", "{view}");
    assert_eq!(view["type"], "svc", "{view}");
}

#[tokio::test]
async fn sanctum_tokens_move_in_as_the_guide_says() {
    need_sqlite3();
    // Arrange: Sanctum's table as its migration makes it on SQLite, with a token of every
    // ability ("*"), a read-only one and an expired one.
    let mut guide = Guide::start().await;
    let db = guide.path("database/database.sqlite");
    sqlite(
        &db,
        "CREATE TABLE personal_access_tokens (
             id integer PRIMARY KEY AUTOINCREMENT NOT NULL,
             tokenable_type varchar NOT NULL,
             tokenable_id integer NOT NULL,
             name text NOT NULL,
             token varchar NOT NULL,
             abilities text,
             last_used_at datetime,
             expires_at datetime,
             created_at datetime,
             updated_at datetime
         );
         CREATE UNIQUE INDEX personal_access_tokens_token_unique ON personal_access_tokens (token);",
    );
    let secrets: Vec<String> = (0..3)
        .map(|_| {
            let entropy = random_from(ALNUM, 40);
            format!("{entropy}{:08x}", crc32fast::hash(entropy.as_bytes()))
        })
        .collect();
    sqlite(
        &db,
        &format!(
            "INSERT INTO personal_access_tokens VALUES (7, 'App\\Models\\User', 3, 'api', '{}', \
                 '[\"*\"]', NULL, NULL, '2025-05-05 05:05:05', '2025-05-05 05:05:05');\n\
             INSERT INTO personal_access_tokens VALUES (8, 'App\\Models\\User', 4, 'mobile app', '{}', \
                 '[\"reports:read\"]', '2026-01-01 00:00:00', NULL, '2025-06-06 06:06:06', NULL);\n\
             INSERT INTO personal_access_tokens VALUES (9, 'App\\Models\\User', 4, 'expired', '{}', \
                 '[\"reports:read\"]', NULL, datetime('now', '-1 day'), '2025-01-01 00:00:00', NULL);",
            sha256_hex(&secrets[0]),
            sha256_hex(&secrets[1]),
            sha256_hex(&secrets[2]),
        ),
    );

    // Act
    guide.run(&block(SANCTUM, "sh"), &[]);
    let app = guide.restarted().await;

    // Assert: `<id>|<token>` verifies; the token alone, or under another id, does not.
    let every = format!("7|{}", secrets[0]);
    let all = assert_valid(
        &app,
        "a * token",
        &every,
        &["reports:read", "reports:write"],
    )
    .await;
    assert_valid(
        &app,
        "a read token",
        &format!("8|{}", secrets[1]),
        &["reports:read"],
    )
    .await;
    assert_eq!(gateway_check(&app, &every).await, StatusCode::NO_CONTENT);
    assert_invalid(&app, "an expired token", &format!("9|{}", secrets[2])).await;
    assert_invalid(&app, "a token without its id", &secrets[0]).await;
    assert_invalid(
        &app,
        "a token under another id",
        &format!("8|{}", secrets[0]),
    )
    .await;
    let view = guide.view(&app, all["token_id"].as_str().unwrap()).await;
    assert_eq!(view["name"], "api sanctum:7", "{view}");
    assert_eq!(view["format"], "sanctum", "{view}");
    assert_eq!(view["metadata"]["tokenable_id"], 3, "{view}");
}

// ---- The API import, the file format and rotation ----

#[tokio::test]
async fn the_api_import_and_the_rotation_run_as_written() {
    need("curl", "curl", "migrating_docs::");
    need("jq", "jq", "migrating_docs::");
    // Arrange: two keys of a SHA-256 system in the file the API block sends.
    let guide = Guide::start().await;
    let keys: Vec<String> = (0..2)
        .map(|_| format!("tok_{}", random_from(HEX, 64)))
        .collect();
    let lines: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            serde_json::json!({
                "scheme": "sha256",
                "hash": sha256_hex(k),
                "name": format!("key {i}"),
                "scopes": ["reports:read"],
            })
            .to_string()
        })
        .collect();
    std::fs::write(guide.path("keys.jsonl"), lines.join("\n") + "\n").unwrap();

    // Act: the API import, verified at once by the running server.
    guide.run(&block(IMPORTING, "sh"), &[]);
    let app = &guide.app;
    let kept = assert_valid(app, "key 0", &keys[0], &["reports:read"]).await;
    let unused = assert_valid(app, "key 1", &keys[1], &["reports:read"]).await;
    let kept_id = kept["token_id"].as_str().unwrap().to_string();
    let unused_id = unused["token_id"].as_str().unwrap().to_string();
    // The rotation block, keeping the new token for the checks.
    let rotation = format!(
        "{}printf '%s' \"$NEW\" > new-token.txt\n",
        block(ROTATING, "sh")
    );
    let printed = guide.run(&rotation, &[("ID", &kept_id), ("UNUSED_ID", &unused_id)]);

    // Assert: the list named both keys; the old key works during the grace, the new one is
    // native with the same scopes; the unused key is revoked.
    assert!(
        printed.contains("key 0") && printed.contains("key 1"),
        "{printed}"
    );
    let new = std::fs::read_to_string(guide.path("new-token.txt")).unwrap();
    assert!(new.starts_with("lk_pat_"), "a native token");
    let rotated = assert_valid(app, "the new token", &new, &["reports:read"]).await;
    assert_valid(
        app,
        "key 0 in its grace period",
        &keys[0],
        &["reports:read"],
    )
    .await;
    assert_invalid(app, "key 1, revoked", &keys[1]).await;
    let old = guide.view(app, &kept_id).await;
    assert_eq!(old["replaced_by"], rotated["token_id"], "{old}");
    let new_view = guide.view(app, rotated["token_id"].as_str().unwrap()).await;
    assert_eq!(new_view["format"], "native", "{new_view}");
    assert_eq!(new_view["name"], "key 0", "{new_view}");
}

#[tokio::test]
async fn a_refused_line_is_reported_as_the_guide_shows_and_nothing_is_written() {
    // Arrange: a good line and one with a field the format does not have.
    let guide = Guide::start().await;
    let key = format!("tok_{}", random_from(HEX, 64));
    let good = serde_json::json!({"scheme": "sha256", "hash": sha256_hex(&key), "name": "good"});
    let bad = serde_json::json!({"scheme": "sha256", "hash": sha256_hex("x"), "name": "bad", "revoked": true});
    std::fs::write(guide.path("keys.jsonl"), format!("{good}\n{bad}\n")).unwrap();

    // Act
    let out = guide.bash(
        "latchkey import --config latchkey.toml --org-name default keys.jsonl",
        &[],
    );

    // Assert: the lines of the guide's example, exit status 1, and the good key not imported.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("line 2: refused: not a valid key: unknown field `revoked`, expected one of `scheme`, `hash`, `name`,"),
        "{printed}"
    );
    assert!(
        printed.contains("0 imported, 0 already present, 1 refused; nothing was written"),
        "{printed}"
    );
    assert!(printed.contains("error: 1 line(s) refused"), "{printed}");
    assert!(
        section(IMPORTING).contains("refused; nothing was written\n  error: 2 line(s) refused"),
        "the guide's example shows the summary and the error line"
    );
    assert_invalid(&guide.app, "a key of a refused file", &key).await;
}

/// The backticked names in the first cell of each row of the section's table.
fn documented_fields(heading: &str) -> Vec<String> {
    let mut fields = Vec::new();
    for row in section(heading).lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split(" | ").next().unwrap();
        fields.extend(cell.split('`').skip(1).step_by(2).map(str::to_string));
    }
    fields.sort();
    fields
}

#[tokio::test]
async fn the_import_file_table_names_every_field_of_an_import_line_and_no_other() {
    // Arrange
    let app = spawn_app_with(&[]).await;
    let doc: Value = app
        .get("/v1/openapi.json", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();

    // Act
    let mut fields: Vec<String> = doc["components"]["schemas"]["ImportLine"]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("ImportLine in the OpenAPI document"))
        .keys()
        .cloned()
        .collect();
    fields.sort();

    // Assert
    assert_eq!(documented_fields(IMPORT_FILE), fields);
}
