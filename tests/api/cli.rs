use std::process::Command;

use crate::helpers::{BIN, spawn_app};

#[tokio::test]
async fn bootstrap_prints_a_working_admin_token_alone_on_stdout() {
    // Arrange: a server on a database, and the bootstrap command run beside it.
    let app = spawn_app().await;

    // Act
    let out = Command::new(BIN)
        .args([
            "bootstrap",
            "--database-url",
            &app.database_url,
            "--org-name",
            "second",
        ])
        .output()
        .unwrap();

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1);
    assert!(token.starts_with("lk_pat_"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("will not be shown again"));
    assert!(!stderr.contains(token));
    let v = app
        .verify(token, &["platform:admin", "org:admin", "tokens:create"])
        .await;
    assert_eq!(v["code"], "VALID");
    assert_ne!(v["org_id"], app.org_id.to_string());
}

#[tokio::test]
async fn bootstrap_into_an_existing_org_mints_another_admin_of_that_org() {
    let app = spawn_app().await;
    let out = Command::new(BIN)
        .args(["bootstrap", "--database-url", &app.database_url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(token, app.admin_token);
    assert_eq!(
        app.verify(&token, &[]).await["org_id"],
        app.org_id.to_string()
    );
}

#[test]
fn the_server_prints_its_bootstrap_token_only_on_first_start() {
    // The helper already read the token of a first start; a restart must print none.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = spawn_app().await;
        assert!(app.admin_token.starts_with("lk_pat_"));
        assert!(app.logs().contains("will not be shown again"));
        let again = app.restart(&[]).await;
        assert!(again.admin_token.is_empty());
        assert!(!again.logs().contains("will not be shown again"));
    });
}

#[test]
fn help_documents_every_flag_with_its_environment_variable_and_default() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--database-url", "LATCHKEY_DATABASE_URL"),
        ("--listen", "LATCHKEY_LISTEN"),
        ("--config", "LATCHKEY_CONFIG"),
        ("--token-prefix", "LATCHKEY_TOKEN_PREFIX"),
        ("--hash", "LATCHKEY_HASH"),
        ("--log-format", "LATCHKEY_LOG_FORMAT"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing:\n{help}"
        );
    }
    assert!(help.contains("[default: 127.0.0.1:8080]"));
}

#[test]
fn a_bad_flag_value_fails_with_a_message_not_a_panic() {
    let out = Command::new(BIN)
        .args(["serve", "--token-prefix", "Bad_Prefix"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("token prefix must match"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_refusal_delay_as_long_as_the_request_timeout_is_refused_at_start() {
    // Act
    let out = Command::new(BIN)
        .args([
            "serve",
            "--rate-limit-refusal-delay-ms",
            "2000",
            "--request-timeout-seconds",
            "2",
        ])
        .output()
        .unwrap();

    // Assert
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("must be shorter than --request-timeout-seconds"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[tokio::test]
async fn a_custom_prefix_is_used_for_every_issued_token() {
    let app = crate::helpers::spawn_app_with(&["--token-prefix", "ibex"]).await;
    assert!(
        app.admin_token.starts_with("ibex_pat_"),
        "{}",
        app.admin_token
    );
}

/// Runs `latchkey <args>` as the client of `app`, with `LATCHKEY_TOKEN` set to `token`.
fn client(
    app: &crate::helpers::TestApp,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("LATCHKEY_URL", &app.address)
        .env_remove("LATCHKEY_TOKEN");
    if let Some(t) = token {
        cmd.env("LATCHKEY_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[tokio::test]
async fn the_client_creates_lists_rotates_disables_and_revokes_tokens() {
    // Arrange
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());

    // Act + Assert: create prints the plaintext alone on stdout, the reminder on stderr.
    let created = client(
        &app,
        admin,
        &[
            "token",
            "create",
            "--name",
            "cli made",
            "--scope",
            "tokens:read",
            "--ttl-seconds",
            "7200",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let plaintext = stdout(&created).trim().to_string();
    assert_eq!(stdout(&created).lines().count(), 1);
    assert!(plaintext.starts_with("lk_pat_"));
    assert!(stderr(&created).contains("will not be shown again"));
    let id = plaintext.split('_').nth(2).unwrap().to_string();

    let listed = client(&app, admin, &["token", "list"]);
    let table = stdout(&listed);
    assert!(table.starts_with("ID"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .expect("the new token is listed");
    assert!(
        row.contains("cli made")
            && row.contains("active")
            && row.contains("in 2h")
            && row.contains("never"),
        "{row}"
    );

    let json_list: serde_json::Value =
        serde_json::from_str(&stdout(&client(&app, admin, &["token", "list", "--json"]))).unwrap();
    assert!(
        json_list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id)
    );

    let verified = client(
        &app,
        None,
        &["token", "verify", &plaintext, "--require", "tokens:read"],
    );
    assert!(verified.status.success());
    assert!(stdout(&verified).starts_with("VALID"));

    let rotated = client(
        &app,
        admin,
        &["token", "rotate", &id, "--grace-seconds", "0"],
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let new_plaintext = stdout(&rotated).trim().to_string();
    assert!(new_plaintext.starts_with("lk_pat_") && new_plaintext != plaintext);
    assert!(
        !client(&app, None, &["token", "verify", &plaintext])
            .status
            .success()
    );
    let new_id = new_plaintext.split('_').nth(2).unwrap().to_string();

    let disabled = client(&app, admin, &["token", "disable", &new_id]);
    assert!(
        stdout(&disabled).contains("disabled"),
        "{}",
        stdout(&disabled)
    );
    let invalid = client(&app, None, &["token", "verify", &new_plaintext]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(stdout(&invalid).starts_with("INVALID"));
    client(&app, admin, &["token", "enable", &new_id]);

    let got = client(&app, admin, &["token", "get", &new_id]);
    assert!(stdout(&got).contains("active"), "{}", stdout(&got));

    let revoked = client(&app, admin, &["token", "revoke", &new_id]);
    assert!(revoked.status.success());
    assert!(stdout(&revoked).contains(&new_id));

    let audit = client(&app, admin, &["audit", "list", "--token-id", &new_id]);
    let audit = stdout(&audit);
    for action in [
        "token_revoked",
        "token_enabled",
        "token_disabled",
        "token_created",
    ] {
        assert!(audit.contains(action), "{action} missing:\n{audit}");
    }
}

#[tokio::test]
async fn the_client_fails_with_the_servers_message_and_a_non_zero_exit() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    client(&app, admin, &["token", "create", "--name", "dup"]);
    let dup = client(&app, admin, &["token", "create", "--name", "dup"]);
    assert!(!dup.status.success());
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));
    assert!(stdout(&dup).is_empty());

    let anonymous = client(&app, None, &["token", "list"]);
    assert!(!anonymous.status.success());
    assert!(stderr(&anonymous).contains("LATCHKEY_TOKEN"));

    let bad = client(&app, Some("garbage"), &["token", "list"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("missing or invalid bearer token"),
        "{}",
        stderr(&bad)
    );

    let missing = client(
        &app,
        admin,
        &["token", "get", &uuid::Uuid::now_v7().to_string()],
    );
    assert!(stderr(&missing).contains("not found"));

    let unreachable = Command::new(BIN)
        .args([
            "token",
            "list",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
}

/// Every command path of the CLI, for the tests of `--help`.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["serve"],
    &["bootstrap"],
    &["login"],
    &["token"],
    &["token", "create"],
    &["token", "list"],
    &["token", "get"],
    &["token", "revoke"],
    &["token", "rotate"],
    &["token", "disable"],
    &["token", "enable"],
    &["token", "verify"],
    &["audit"],
    &["audit", "list"],
    &["user"],
    &["user", "create"],
    &["user", "list"],
    &["user", "get"],
    &["user", "me"],
    &["user", "disable"],
    &["user", "enable"],
];

/// The flags and arguments of a help text that have no description: an entry line (`--flag`,
/// `-f`, `<ARG>`) with no text after its name, on its line or the next.
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if !line.starts_with("  ") || !(trimmed.starts_with('-') || trimmed.starts_with('<')) {
            continue;
        }
        let same_line = trimmed
            .split_once("  ")
            .is_some_and(|(_, rest)| !rest.trim().is_empty());
        let next_line = lines.get(i + 1).is_some_and(|next| {
            let t = next.trim_start();
            next.len() - t.len() > 6 && !t.is_empty() && !t.starts_with('-')
        });
        if !same_line && !next_line {
            missing.push(trimmed.to_string());
        }
    }
    missing
}

#[test]
fn every_command_says_what_it_is_for_and_every_flag_has_a_description() {
    for path in COMMANDS {
        // Act
        let out = Command::new(BIN).args(*path).arg("-h").output().unwrap();

        // Assert
        assert!(out.status.success(), "{path:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let first = help.lines().next().unwrap_or("");
        assert!(
            !first.is_empty() && !first.starts_with("Usage"),
            "latchkey {path:?} -h has no description:\n{help}"
        );
        let missing = undescribed(&help);
        assert!(
            missing.is_empty(),
            "latchkey {path:?} -h: no description for {missing:?}:\n{help}"
        );
    }
}

#[test]
fn help_shows_the_default_of_each_flag_that_has_one() {
    for (path, defaults) in [
        (
            &["token", "create"][..],
            &["[default: pat]", "[default: http://127.0.0.1:8080]"][..],
        ),
        (&["token", "list"], &["[default: 50]"]),
        (&["token", "rotate"], &["[default: 3600]"]),
        (&["audit", "list"], &["[default: 50]"]),
        (
            &["user", "create"],
            &["[default: member]", "[default: default]"],
        ),
        (
            &["bootstrap"],
            &["[default: sqlite://latchkey-data/latchkey.db]"],
        ),
        (&["serve"], &["[default: 127.0.0.1:8080]", "[default: 10]"]),
    ] {
        // Act
        let out = Command::new(BIN).args(path).arg("-h").output().unwrap();

        // Assert
        let help = String::from_utf8(out.stdout).unwrap();
        for d in defaults {
            assert!(help.contains(d), "latchkey {path:?} -h lacks {d}:\n{help}");
        }
    }
}

#[test]
fn version_prints_the_crate_version_and_the_commit() {
    // Act
    let out = Command::new(BIN).arg("--version").output().unwrap();

    // Assert
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(
        version.starts_with(&format!("latchkey {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let commit = version
        .trim_end()
        .rsplit("(commit ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
}

#[test]
fn a_failing_command_prints_one_error_line_and_no_backtrace_even_when_asked_for_one() {
    // Arrange: a server that is not there, and every backtrace switch on.
    let mut cmd = Command::new(BIN);
    cmd.args([
        "token",
        "list",
        "--url",
        "http://127.0.0.1:9",
        "--token",
        "x",
    ])
    .env("RUST_BACKTRACE", "1")
    .env("RUST_LIB_BACKTRACE", "1");

    // Act
    let out = cmd.output().unwrap();

    // Assert
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: cannot reach"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(!err.contains("Caused by"), "{err}");
}

#[test]
fn a_bad_server_setting_is_one_error_line_without_a_backtrace() {
    // Act
    let out = Command::new(BIN)
        .args([
            "serve",
            "--rate-limit-refusal-delay-ms",
            "2000",
            "--request-timeout-seconds",
            "2",
        ])
        .env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();

    // Assert
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

#[tokio::test]
async fn the_server_logs_without_colour_codes_when_stderr_is_not_a_terminal() {
    // Arrange: text logs (the format that could be coloured) into a file.
    let dir = tempfile::TempDir::new().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--database-url",
            &crate::helpers::db_url(dir.path()),
        ])
        .env("LATCHKEY_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("LATCHKEY_LOG_FORMAT")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    // Act: wait for the `listening` line.
    let started = std::time::Instant::now();
    let logs = loop {
        let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
        if logs.contains("listening") || started.elapsed() > std::time::Duration::from_secs(60) {
            break logs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let _ = server.kill();
    let _ = server.wait();

    // Assert
    assert!(logs.contains("listening"), "{logs}");
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains("\x1b["), "{logs:?}");
}

#[tokio::test]
async fn every_cli_request_carries_the_cli_user_agent_into_the_audit_log() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let created = client(
        &app,
        Some(&app.admin_token),
        &["token", "create", "--name", "agent"],
    );

    // Assert
    assert!(created.status.success(), "{}", stderr(&created));
    let id = stdout(&created)
        .trim()
        .split('_')
        .nth(2)
        .unwrap()
        .to_string();
    let res = app
        .get(
            &format!("/v1/audit?token_id={id}&action=token_created"),
            &app.admin_token,
        )
        .await;
    let events: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        events["events"][0]["user_agent"],
        format!("latchkey-cli/{}", env!("CARGO_PKG_VERSION")),
        "{events}"
    );
}

#[tokio::test]
async fn a_revoked_token_is_listed_as_revoked_with_no_expiry_countdown() {
    // Arrange: a token that would expire in two hours, revoked.
    let app = spawn_app().await;
    let (_, view) = app
        .create_token(
            &app.admin_token,
            serde_json::json!({ "name": "gone", "ttl_seconds": 7200 }),
        )
        .await;
    let id = view["id"].as_str().unwrap().to_string();
    let res = app
        .delete(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await;
    assert!(res.status().is_success());

    // Act
    let listed = client(&app, Some(&app.admin_token), &["token", "list"]);
    let got = client(&app, Some(&app.admin_token), &["token", "get", &id]);

    // Assert
    let table = stdout(&listed);
    let row = table.lines().find(|l| l.contains(&id)).expect("listed");
    assert!(row.contains("revoked"), "{row}");
    assert!(!row.contains("in 2h"), "{row}");
    let detail = stdout(&got);
    let expires = detail
        .lines()
        .find(|l| l.starts_with("expires"))
        .expect("an expires line");
    assert_eq!(expires.split_whitespace().nth(1), Some("-"), "{detail}");
}

#[tokio::test]
async fn verify_and_show_print_no_trailing_spaces() {
    // Arrange: a token with no scopes (an empty last field), and one that is not a token.
    let app = spawn_app().await;
    let (plaintext, view) = app
        .create_token(&app.admin_token, serde_json::json!({ "name": "bare" }))
        .await;
    let id = view["id"].as_str().unwrap();

    // Act
    let valid = client(&app, None, &["token", "verify", &plaintext]);
    let invalid = client(&app, None, &["token", "verify", "not-a-token"]);
    let shown = client(&app, Some(&app.admin_token), &["token", "get", id]);
    let listed = client(&app, Some(&app.admin_token), &["token", "list"]);

    // Assert
    assert_eq!(stdout(&valid), format!("VALID {id}\n"));
    assert_eq!(stdout(&invalid), "INVALID\n");
    for out in [&valid, &invalid, &shown, &listed] {
        for line in stdout(out).lines() {
            assert_eq!(line, line.trim_end(), "trailing spaces: {line:?}");
        }
    }
}

#[tokio::test]
async fn a_mint_past_the_per_token_limit_names_the_limit_the_wait_and_the_flag() {
    // Arrange: one mint per calling token per hour, used up.
    let app = crate::helpers::spawn_app_with(&["--rate-limit-mint-per-token-per-hour", "1"]).await;
    let admin = Some(app.admin_token.as_str());
    let first = client(&app, admin, &["token", "create", "--name", "first"]);
    assert!(first.status.success(), "{}", stderr(&first));

    // Act
    let second = client(&app, admin, &["token", "create", "--name", "second"]);

    // Assert
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(err.starts_with("error: rate limited: "), "{err}");
    assert!(err.contains("per calling token per hour"), "{err}");
    assert!(err.contains("try again in 60 minutes"), "{err}");
    assert!(
        err.contains("--rate-limit-mint-per-token-per-hour"),
        "{err}"
    );
}

#[tokio::test]
async fn a_verify_past_the_failed_verification_limit_names_the_limit_and_the_flag() {
    // Arrange: one failed Argon2id check per minute; a second failure blocks the address and
    // the token guessed at.
    let app = crate::helpers::spawn_app_with(&[
        "--hash",
        "argon2id",
        "--rate-limit-failed-verify-per-minute",
        "1",
        "--rate-limit-refusal-delay-ms",
        "0",
    ])
    .await;
    let (guessed, _) = app.token_with(&app.admin_token, "guessed", &[]).await;
    let wrong = |secret: u8| crate::helpers::forge(&guessed, None, Some([secret; 32]));
    for secret in [1, 2] {
        let failed = client(&app, None, &["token", "verify", &wrong(secret)]);
        assert_eq!(stdout(&failed), "INVALID\n");
    }

    // Act
    let refused = client(&app, None, &["token", "verify", &wrong(3)]);

    // Assert
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(stdout(&refused), "RATE_LIMITED\n");
    let err = stderr(&refused);
    assert!(err.contains("too many failed verifications"), "{err}");
    assert!(err.contains("try again in"), "{err}");
    assert!(
        err.contains("--rate-limit-failed-verify-per-minute"),
        "{err}"
    );
}

#[tokio::test]
async fn a_request_past_the_management_limit_names_the_limit_and_the_flags() {
    // Arrange: one management request per second per address.
    let app = crate::helpers::spawn_app_with(&[
        "--rate-limit-per-second",
        "1",
        "--rate-limit-burst",
        "1",
    ])
    .await;
    let admin = Some(app.admin_token.as_str());

    // Act: list until refused (two calls within a second, unless the machine is very slow).
    let refused = (0..5)
        .map(|_| client(&app, admin, &["token", "list"]))
        .find(|o| !o.status.success())
        .expect("a list refused by the limit");

    // Assert
    let err = stderr(&refused);
    assert!(err.starts_with("error: rate limited: "), "{err}");
    assert!(err.contains("management requests"), "{err}");
    assert!(err.contains("try again in 1 second"), "{err}");
    assert!(
        err.contains("--rate-limit-per-second") && err.contains("--rate-limit-burst"),
        "{err}"
    );
}

/// Runs the CLI with `stdin` fed in; returns (success, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_and_the_audit_log_revokes_what_came_back() {
    // Arrange: a token A, the backup, then A revoked and B made on the live server.
    let app = crate::helpers::spawn_sqlite_app().await;
    let (a, a_view) = app.token_with(&app.admin_token, "before", &[]).await;
    let a_id = a_view["id"].as_str().unwrap().to_string();
    let backup_dir = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let copy = backup_dir.path().join("backup.db");
    let since = chrono::Utc::now().to_rfc3339();
    let (ok, _, err) = cli(
        &[
            "backup",
            "--database-url",
            &app.database_url,
            "--to",
            copy.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains("bytes"), "{err}");
    app.delete(&format!("/v1/tokens/{a_id}"), &app.admin_token)
        .await;
    let (b, _) = app.token_with(&app.admin_token, "after", &[]).await;
    let live = [
        ("LATCHKEY_URL", app.address.as_str()),
        ("LATCHKEY_TOKEN", app.admin_token.as_str()),
    ];

    // Act: serve the copy; revoke again, from the live server's audit log, what it brought back.
    let url = format!("sqlite://{}", copy.display());
    let restored = crate::helpers::spawn_sqlite_app_on(&url, backup_dir.clone()).await;
    let came_back = restored.verify(&a, &[]).await;
    let b_on_copy = restored.verify(&b, &[]).await;
    let (listed, ids, err) = cli(
        &[
            "audit",
            "list",
            "--action",
            "token_revoked",
            "--since",
            &since,
            "--ids",
        ],
        &live,
        "",
    );
    assert!(listed, "{err}");
    let on_copy = [
        ("LATCHKEY_URL", restored.address.as_str()),
        ("LATCHKEY_TOKEN", app.admin_token.as_str()),
    ];
    let (revoked, out, err) = cli(&["token", "revoke", "-"], &on_copy, &ids);

    // Assert
    assert_eq!(
        came_back["code"], "VALID",
        "a restore brings back what was revoked after it"
    );
    assert_eq!(
        b_on_copy["code"], "INVALID",
        "nothing made after the backup is in it"
    );
    assert_eq!(ids, format!("{a_id}\n"));
    assert!(revoked, "{err}");
    assert_eq!(out, format!("revoked {a_id}\n"));
    assert_eq!(restored.verify(&a, &[]).await["code"], "INVALID");
}

#[tokio::test]
async fn backup_refuses_an_existing_file_a_missing_database_and_postgresql_in_words() {
    // Arrange
    let app = crate::helpers::spawn_sqlite_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let taken = dir.path().join("taken.db");
    std::fs::write(&taken, b"keep me").unwrap();
    let missing = format!("sqlite://{}", dir.path().join("nope.db").display());
    let fresh = dir.path().join("fresh.db");

    // Act
    let over = cli(
        &[
            "backup",
            "--database-url",
            &app.database_url,
            "--to",
            taken.to_str().unwrap(),
        ],
        &[],
        "",
    );
    let nothing = cli(
        &[
            "backup",
            "--database-url",
            &missing,
            "--to",
            fresh.to_str().unwrap(),
        ],
        &[],
        "",
    );
    let pg = cli(
        &[
            "backup",
            "--database-url",
            "postgres://u:secret@127.0.0.1:1/db",
            "--to",
            fresh.to_str().unwrap(),
        ],
        &[],
        "",
    );

    // Assert
    assert!(!over.0);
    assert!(over.2.contains("exists"), "{}", over.2);
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    assert!(!nothing.0);
    assert!(nothing.2.contains("no database"), "{}", nothing.2);
    assert!(!fresh.exists(), "no file for a missing database");
    assert!(!pg.0);
    assert!(pg.2.contains("pg_dump"), "{}", pg.2);
    assert!(
        !pg.2.contains("secret"),
        "the URL's password is not echoed: {}",
        pg.2
    );
}

#[tokio::test]
async fn revoking_ids_from_stdin_names_each_one_that_failed_and_exits_non_zero() {
    // Arrange
    let app = spawn_app().await;
    let (t, view) = app.token_with(&app.admin_token, "piped", &[]).await;
    let id = view["id"].as_str().unwrap();
    let env = [
        ("LATCHKEY_URL", app.address.as_str()),
        ("LATCHKEY_TOKEN", app.admin_token.as_str()),
    ];
    let unknown = uuid::Uuid::now_v7().to_string();

    // Act
    let (ok, out, err) = cli(
        &["token", "revoke", "-"],
        &env,
        &format!("{id}\n\n{unknown}\nnot-an-id\n"),
    );

    // Assert
    assert!(!ok);
    assert_eq!(out, format!("revoked {id}\n"));
    assert!(err.contains(&unknown), "{err}");
    assert!(err.contains("not-an-id"), "{err}");
    assert!(err.contains("2 of 3"), "{err}");
    assert_eq!(app.verify(&t, &[]).await["code"], "INVALID");
}
