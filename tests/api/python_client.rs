//! A client nobody here wrote: Python's official grpcio, discovering the API by reflection only.
//! The Python is `LATCHKEY_TEST_PYTHON` when set (`.ci/run` installs grpcio in a venv and sets
//! it), else the venv `.ci/run` makes (`target/ci-venv`) when present, else `python3`. Without
//! grpcio the test fails, saying how to install it or leave it out: a test that did not run is
//! never reported as passed.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::spawn_app;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/grpc_reflection_client.py"
);

/// A Python that imports grpc and grpc_reflection, or a failed test that says how to get one.
fn python_with_grpc() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ci-venv/bin/python");
    let candidates = match std::env::var("LATCHKEY_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec![venv.to_string(), "python3".to_string()],
    };
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import grpc, grpc_reflection"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "this test needs a Python with grpcio and grpcio-reflection, and none of {candidates:?} \
         has them. Install them: `python3 -m venv target/ci-venv && target/ci-venv/bin/pip \
         install grpcio grpcio-reflection protobuf` (found there without further setting), or \
         set LATCHKEY_TEST_PYTHON to such a Python; or leave this test out: \
         `cargo test -- --skip python_client`."
    )
}

#[tokio::test]
async fn the_official_python_client_creates_a_token_through_reflection_alone() {
    // Arrange
    let python = python_with_grpc();
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
