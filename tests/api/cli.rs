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
