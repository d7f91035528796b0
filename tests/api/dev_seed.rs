//! `latchkey dev-seed`: fixed ids, a fixed local-only token, idempotent, refused where it could
//! reach a shared database.

use std::process::{Command, Output};

use reqwest::StatusCode;

use crate::helpers::{BIN, spawn_app};

const ORG: &str = "00000000-0000-0000-0000-000000000001";
const TOKEN_ID: &str = "00000000-0000-0000-0000-000000000004";
const TOKEN: &str = "lk_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY";

fn dev_seed(database_url: &str, env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(["dev-seed", "--database-url", database_url])
        .env_remove("LATCHKEY_ENV")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[tokio::test]
async fn dev_seed_creates_the_fixed_org_user_and_token_once_and_prints_the_same_exports_twice() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let first = dev_seed(&app.database_url, &[]);
    let second = dev_seed(&app.database_url, &[]);
    // A server learns at start that keys of this storage scheme exist.
    let app = app.restart(&[]).await;

    // Assert: the same export lines both times, the second run creating nothing.
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(second.status.success(), "{}", stderr(&second));
    let exports = stdout(&first);
    assert_eq!(exports, stdout(&second));
    assert!(exports.contains(&format!("export LATCHKEY_DEV_TOKEN={TOKEN}\n")));
    assert!(exports.contains(&format!("export LATCHKEY_DEV_ORG_ID={ORG}\n")));
    assert!(stderr(&second).contains("already seeded"));
    let v = app.verify(TOKEN, &["org:admin", "tokens:create"]).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["org_id"], ORG);
    assert_eq!(v["token_id"], TOKEN_ID);
    let tokens = app.get("/v1/tokens", TOKEN).await;
    assert_eq!(tokens.status(), StatusCode::OK);
    let tokens: serde_json::Value = tokens.json().await.unwrap();
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["owner"], "00000000-0000-0000-0000-000000000002");
    let audit: serde_json::Value = app
        .get("/v1/audit?action=token_created", TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test]
async fn the_dev_token_follows_the_deployment_prefix() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let out = Command::new(BIN)
        .args([
            "dev-seed",
            "--database-url",
            &app.database_url,
            "--token-prefix",
            "ibex",
        ])
        .output()
        .unwrap();
    let app = app.restart(&["--token-prefix", "ibex"]).await;

    // Assert: with the prefix `ibex` the token is the Go service's development token.
    assert!(out.status.success(), "{}", stderr(&out));
    let ibex = "ibex_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY";
    assert!(stdout(&out).contains(ibex));
    assert_eq!(app.verify(ibex, &[]).await["code"], "VALID");
    assert_eq!(app.verify(TOKEN, &[]).await["code"], "INVALID");
}

#[tokio::test]
async fn dev_seed_refuses_production_and_a_remote_postgres_and_writes_nothing() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let production = dev_seed(&app.database_url, &[("LATCHKEY_ENV", "production")]);
    let remote = dev_seed("postgres://latchkey@db.example.com:5432/latchkey", &[]);

    // Assert
    assert!(!production.status.success());
    assert!(
        stderr(&production).contains("LATCHKEY_ENV=production"),
        "{}",
        stderr(&production)
    );
    assert!(stdout(&production).is_empty());
    assert!(!remote.status.success());
    assert!(
        stderr(&remote).contains("not loopback"),
        "{}",
        stderr(&remote)
    );
    let org = app.get(&format!("/v1/orgs/{ORG}"), &app.admin_token).await;
    assert_eq!(org.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.verify(TOKEN, &[]).await["code"], "INVALID");
}
