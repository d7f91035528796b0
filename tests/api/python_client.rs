//! A client nobody here wrote: Python's official grpcio, discovering the API by reflection only.
//! `.ci/run` installs it in a venv and sets `LATCHKEY_TEST_PYTHON`; on a developer machine
//! without it the test says so and passes only outside CI.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::spawn_app;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/grpc_reflection_client.py"
);

fn python_with_grpc() -> Option<String> {
    let python = std::env::var("LATCHKEY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import grpc, grpc_reflection"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide Python with grpcio and grpcio-reflection (LATCHKEY_TEST_PYTHON)"
    );
    eprintln!("skipping: no Python with grpcio + grpcio-reflection (set LATCHKEY_TEST_PYTHON)");
    None
}

#[tokio::test]
async fn the_official_python_client_creates_a_token_through_reflection_alone() {
    let Some(python) = python_with_grpc() else {
        return;
    };
    // Arrange
    let app = spawn_app().await;
    let body =
        json!({"org_id": app.org_id, "name": "dev-pat", "type": 1, "permissions": 4}).to_string();
    let address = app.address.trim_start_matches("http://").to_string();

    // Act
    let token = app.admin_token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([
                SCRIPT,
                &address,
                &token,
                "latchkey.auth.v1.AuthService",
                "CreateToken",
                &body,
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("run python");

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resp["token"]["name"], "dev-pat");
    assert_eq!(resp["token"]["type"], "TOKEN_TYPE_PAT");
    let plaintext = resp["plaintext"].as_str().unwrap();
    let v = app.verify(plaintext, &["tokens:read"]).await;
    assert_eq!(v["code"], "VALID");
}
