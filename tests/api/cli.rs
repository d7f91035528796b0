use std::process::Command;

use crate::helpers::{BIN, db_url, spawn_app};

#[tokio::test]
async fn bootstrap_prints_a_working_admin_token_alone_on_stdout() {
    // Arrange: a server on a database, and the bootstrap command run beside it.
    let app = spawn_app().await;

    // Act
    let out = Command::new(BIN)
        .args([
            "bootstrap",
            "--database-url",
            &db_url(app.dir.path()),
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
        .args(["bootstrap", "--database-url", &db_url(app.dir.path())])
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
        let again = crate::helpers::spawn_binary(app.dir.clone(), &[]).await;
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

#[tokio::test]
async fn a_custom_prefix_is_used_for_every_issued_token() {
    let app = crate::helpers::spawn_app_with(&["--token-prefix", "ibex"]).await;
    assert!(
        app.admin_token.starts_with("ibex_pat_"),
        "{}",
        app.admin_token
    );
}
