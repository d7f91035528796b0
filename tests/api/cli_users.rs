//! `latchkey user ...` and `latchkey login`: the real binary, against a database (offline
//! `user create`) and a server started on it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{BIN, TestApp, db_url, spawn_node};

const PASSWORD: &str = "correct horse battery staple";

/// Runs `latchkey <args>` with `stdin` written to its standard input (closed after), and
/// `LATCHKEY_URL` / `LATCHKEY_TOKEN` taken from `server` and `token` (unset otherwise).
fn run(args: &[&str], stdin: &str, server: Option<&TestApp>, token: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("LATCHKEY_URL")
        .env_remove("LATCHKEY_TOKEN")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(app) = server {
        cmd.env("LATCHKEY_URL", &app.address);
    }
    if let Some(t) = token {
        cmd.env("LATCHKEY_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("start latchkey");
    let mut input = child.stdin.take().expect("stdin");
    // The command may exit before reading everything (a refused flag): ignore a broken pipe.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("latchkey output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A fresh SQLite database in a directory of its own.
fn fresh_db() -> (TempDir, String) {
    let dir = TempDir::new().expect("temp dir");
    let url = db_url(dir.path());
    (dir, url)
}

/// `latchkey user create` on `db` with `extra` flags and `stdin`.
fn create_user(db: &str, email: &str, extra: &[&str], stdin: &str) -> Output {
    let mut args = vec![
        "user",
        "create",
        "--database-url",
        db,
        "--email",
        email,
        "--name",
        "Test Person",
    ];
    args.extend_from_slice(extra);
    run(&args, stdin, None, None)
}

/// Creates a user with [`PASSWORD`] and the role `role`, asserting success; returns its id.
fn create_with_password(db: &str, email: &str, role: &str) -> String {
    let out = create_user(
        db,
        email,
        &["--role", role, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    created_id(&out)
}

/// The id in the `created user NAME <EMAIL> (ID) in org ...` line on stderr.
fn created_id(out: &Output) -> String {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.starts_with("created user"))
        .unwrap_or_else(|| panic!("no `created user` line:\n{err}"));
    line.split(['(', ')']).nth(1).unwrap().to_string()
}

/// `latchkey login` as `email` with `password` on stdin and `extra` flags.
fn login(app: &TestApp, email: &str, password: &str, extra: &[&str]) -> Output {
    let mut args = vec!["login", "--email", email, "--password-stdin"];
    args.extend_from_slice(extra);
    run(&args, &format!("{password}\n"), Some(app), None)
}

/// Logs in, asserting success and a token alone on stdout; returns the token.
fn login_ok(app: &TestApp, email: &str, extra: &[&str]) -> String {
    let out = login(app, email, PASSWORD, extra);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    text.trim().to_string()
}

fn token_id(plaintext: &str) -> String {
    plaintext.split('_').nth(2).unwrap().to_string()
}

/// Every scope of the admin role: managing a user takes every permission of its role.
const ADMIN_SCOPES: [&str; 16] = [
    "--scope",
    "tokens:create",
    "--scope",
    "tokens:read",
    "--scope",
    "tokens:revoke",
    "--scope",
    "tokens:rotate",
    "--scope",
    "audit:read",
    "--scope",
    "org:admin",
    "--scope",
    "users:read",
    "--scope",
    "users:manage",
];

#[tokio::test]
async fn a_user_created_offline_with_a_password_logs_in_and_gets_a_token_it_owns() {
    // Arrange: the first admin, written to an empty database, and a server started on it.
    let (_dir, db) = fresh_db();
    let created = create_user(
        &db,
        "ada@example.com",
        &["--role", "admin", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).is_empty(), "{}", stdout(&created));
    assert!(!stderr(&created).contains(PASSWORD));
    let user_id = created_id(&created);
    let app = spawn_node(&db, &[]).await;

    // Act
    let out = login(&app, "ada@example.com", PASSWORD, &ADMIN_SCOPES);

    // Assert: the token alone on stdout, valid, owned by the user, minted by the CLI.
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1);
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("lk_pat_"), "{token}");
    assert!(!stderr(&out).contains(&token));
    let v = app.verify(&token, &["users:read"]).await;
    assert_eq!(v["code"], "VALID", "{v}");
    let view: Value = serde_json::from_str(&stdout(&run(
        &["token", "get", &token_id(&token), "--json"],
        "",
        Some(&app),
        Some(&token),
    )))
    .unwrap();
    assert_eq!(view["owner"], user_id.as_str(), "{view}");
    assert!(view["name"].as_str().unwrap().starts_with("cli "), "{view}");
    let me: Value = serde_json::from_str(&stdout(&run(
        &["user", "me", "--json"],
        "",
        Some(&app),
        Some(&token),
    )))
    .unwrap();
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["role"], "admin");
    let events: Value = serde_json::from_str(&stdout(&run(
        &["audit", "list", "--action", "login_succeeded", "--json"],
        "",
        Some(&app),
        Some(&token),
    )))
    .unwrap();
    let agent = events["events"][0]["user_agent"].as_str().unwrap_or("");
    assert!(agent.starts_with("latchkey-cli/"), "{events}");
}

#[test]
fn user_create_without_a_password_prints_a_setup_link_alone_on_stdout() {
    // Arrange
    let (_dir, db) = fresh_db();

    // Act
    let out = create_user(
        &db,
        "grace@example.com",
        &[
            "--org-name",
            "research",
            "--public-url",
            "https://keys.example.com",
        ],
        "",
    );

    // Assert
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.trim()
            .starts_with("https://keys.example.com/ui/setup?token="),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("grace@example.com") && err.contains("\"research\"") && err.contains("member"),
        "{err}"
    );
    assert!(!err.contains(text.trim()));
}

#[test]
fn a_common_password_is_refused_naming_the_rule_without_echoing_it() {
    // Arrange
    let (_dir, db) = fresh_db();

    // Act
    let out = create_user(
        &db,
        "weak@example.com",
        &["--password-stdin"],
        "Password123\n",
    );

    // Assert
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("most common passwords"), "{err}");
    assert!(!err.to_lowercase().contains("password123"), "{err}");
    assert!(!err.contains("panicked"));
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_short_password_and_a_taken_email_are_refused_with_the_services_message() {
    // Arrange
    let (_dir, db) = fresh_db();
    create_with_password(&db, "taken@example.com", "member");

    // Act
    let short = create_user(&db, "short@example.com", &["--password-stdin"], "k7#q\n");
    let taken = create_user(
        &db,
        "TAKEN@example.com",
        &["--password-stdin"],
        &format!("{PASSWORD}\n"),
    );

    // Assert
    assert!(!short.status.success());
    assert!(
        stderr(&short).contains("at least 8 characters"),
        "{}",
        stderr(&short)
    );
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("already exists"),
        "{}",
        stderr(&taken)
    );
}

#[tokio::test]
async fn user_list_with_an_admin_token_lists_the_users_as_json_and_as_a_table() {
    // Arrange
    let (_dir, db) = fresh_db();
    let admin_id = create_with_password(&db, "ada@example.com", "admin");
    let invited = create_user(&db, "bob@example.com", &[], "");
    assert!(invited.status.success(), "{}", stderr(&invited));
    let bob_id = created_id(&invited);
    let app = spawn_node(&db, &[]).await;
    let token = login_ok(&app, "ada@example.com", &ADMIN_SCOPES);

    // Act
    let json = run(&["user", "list", "--json"], "", Some(&app), Some(&token));
    let table = run(&["user", "list"], "", Some(&app), Some(&token));

    // Assert
    assert!(json.status.success(), "{}", stderr(&json));
    let v: Value = serde_json::from_str(&stdout(&json)).unwrap();
    let users = v["users"].as_array().unwrap();
    let ada = users.iter().find(|u| u["id"] == admin_id.as_str()).unwrap();
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["state"], "active");
    assert!(users.iter().any(|u| u["id"] == bob_id.as_str()));
    let rows = stdout(&table);
    assert!(rows.starts_with("ID"), "{rows}");
    for header in ["EMAIL", "NAME", "ROLE", "STATE", "LAST LOGIN"] {
        assert!(rows.lines().next().unwrap().contains(header), "{rows}");
    }
    let bob = rows.lines().find(|l| l.contains(&bob_id)).unwrap();
    assert!(
        bob.contains("bob@example.com") && bob.contains("member") && bob.contains("invited"),
        "{bob}"
    );
}

#[tokio::test]
async fn disabling_a_user_makes_its_login_token_fail_verification() {
    // Arrange: an admin and a member, each signed in with the CLI.
    let (_dir, db) = fresh_db();
    create_with_password(&db, "ada@example.com", "admin");
    let member_id = create_with_password(&db, "bob@example.com", "member");
    let app = spawn_node(&db, &[]).await;
    let admin = login_ok(&app, "ada@example.com", &ADMIN_SCOPES);
    let member = login_ok(&app, "bob@example.com", &["--scope", "tokens:read"]);
    assert_eq!(app.verify(&member, &[]).await["code"], "VALID");

    // Act
    let disabled = run(
        &["user", "disable", &member_id],
        "",
        Some(&app),
        Some(&admin),
    );

    // Assert
    assert!(disabled.status.success(), "{}", stderr(&disabled));
    assert!(
        stdout(&disabled).contains("disabled"),
        "{}",
        stdout(&disabled)
    );
    let v = app.verify(&member, &[]).await;
    assert_eq!(v["valid"], false, "{v}");
    let shown = run(&["user", "get", &member_id], "", Some(&app), Some(&admin));
    assert!(stdout(&shown).contains("disabled"), "{}", stdout(&shown));
    let again = login(&app, "bob@example.com", PASSWORD, &[]);
    assert!(!again.status.success());
    let enabled = run(
        &["user", "enable", &member_id, "--json"],
        "",
        Some(&app),
        Some(&admin),
    );
    let v: Value = serde_json::from_str(&stdout(&enabled)).unwrap();
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(app.verify(&member, &[]).await["valid"], false);
}

#[tokio::test]
async fn login_with_a_wrong_password_exits_non_zero_saying_invalid_email_or_password() {
    // Arrange
    let (_dir, db) = fresh_db();
    create_with_password(&db, "ada@example.com", "admin");
    let app = spawn_node(&db, &[]).await;

    // Act
    let wrong = login(&app, "ada@example.com", "not the password at all", &[]);
    let unknown = login(&app, "nobody@example.com", PASSWORD, &[]);

    // Assert
    for out in [&wrong, &unknown] {
        assert!(!out.status.success());
        assert!(stdout(out).is_empty());
        let err = stderr(out);
        assert!(err.contains("invalid email or password"), "{err}");
        assert!(!err.contains("not the password"), "{err}");
    }
}

#[tokio::test]
async fn login_past_the_sign_in_limit_says_when_to_retry_and_names_the_flag() {
    // Arrange
    let (_dir, db) = fresh_db();
    create_with_password(&db, "ada@example.com", "admin");
    let app = spawn_node(&db, &["--rate-limit-login-per-15m", "1"]).await;
    login_ok(&app, "ada@example.com", &[]);

    // Act
    let out = login(&app, "ada@example.com", PASSWORD, &[]);

    // Assert
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("try again in") && err.contains("--rate-limit-login-per-15m"),
        "{err}"
    );
}

#[test]
fn user_help_tells_the_offline_create_from_the_server_commands() {
    // Act
    let user = run(&["user", "--help"], "", None, None);
    let create = run(&["user", "create", "--help"], "", None, None);

    // Assert
    let help = stdout(&user);
    let create_line = help
        .lines()
        .find(|l| l.trim_start().starts_with("create"))
        .unwrap();
    assert!(create_line.contains("database"), "{help}");
    let list_line = help
        .lines()
        .find(|l| l.trim_start().starts_with("list"))
        .unwrap();
    assert!(list_line.contains("running server"), "{help}");
    let create_help = stdout(&create);
    assert!(
        create_help.contains("--database-url") && !create_help.contains("--url <URL>"),
        "{create_help}"
    );
}
