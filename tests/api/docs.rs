//! The commands in the docs, run as written against a real server.

use std::path::Path;
use std::process::Command;

use crate::helpers::{BIN, spawn_app};

/// The first ```sh block after `heading` in a docs page.
fn shell_block(page: &str, heading: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
    let after = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in {page}"))..];
    let start = after.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = after[start..].find("```").expect("its end");
    after[start..start + len].to_string()
}

/// Runs a docs block with bash (`-euo pipefail`), `latchkey` on the PATH, the server's database
/// and address in place of the defaults.
fn run_block(script: &str, database_url: &str, address: &str) -> (bool, String, String) {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(script.replace("http://127.0.0.1:8080", address))
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("LATCHKEY_DATABASE_URL", database_url)
        .env("RUST_BACKTRACE", "0")
        .env_remove("LATCHKEY_TOKEN")
        .output()
        .expect("bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_people_quick_start_runs_as_written() {
    // Arrange
    let app = spawn_app().await;
    let script = shell_block("docs/people.md", "## Quick start");

    // Act
    let (ok, stdout, stderr) = run_block(&script, &app.database_url, &app.address);

    // Assert
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("/ui/setup?token="), "{stdout}");
    assert!(stdout.contains("ada@example.com"), "{stdout}");
    assert!(stdout.contains("bo@example.com"), "{stdout}");
}

#[tokio::test]
async fn the_readme_people_commands_run_as_written() {
    // Arrange
    let app = spawn_app().await;
    let script = shell_block("README.md", "## People");

    // Act
    let (ok, stdout, stderr) = run_block(
        &format!("{script}\nlatchkey token list --json"),
        &app.database_url,
        &app.address,
    );

    // Assert
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"tokens\""), "{stdout}");
}
