//! The commands in the docs, run as written against a real server.

use std::path::Path;
use std::process::Command;

use crate::helpers::{BIN, spawn_app};

/// The first ```sh block after `heading` in a docs page.
pub(crate) fn shell_block(page: &str, heading: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
    let after = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in {page}"))..];
    let start = after.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = after[start..].find("```").expect("its end");
    after[start..start + len].to_string()
}

/// Runs a docs block with bash (`-euo pipefail`), `latchkey` (and `extra_path`) on the PATH, the
/// server's database and address in place of the defaults (`127.0.0.1:8080`, with or without
/// `http://`).
fn run_block_with(
    script: &str,
    database_url: &str,
    address: &str,
    extra_path: Option<&Path>,
) -> (bool, String, String) {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let mut path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    if let Some(extra) = extra_path {
        path = format!("{}:{path}", extra.display());
    }
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(script.replace("127.0.0.1:8080", address.trim_start_matches("http://")))
        .env("PATH", path)
        .env("LATCHKEY_DATABASE_URL", database_url)
        .env("RUST_BACKTRACE", "0")
        .env_remove("LATCHKEY_TOKEN")
        .env_remove("LATCHKEY_URL")
        .output()
        .expect("bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_block(script: &str, database_url: &str, address: &str) -> (bool, String, String) {
    run_block_with(script, database_url, address, None)
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

// ---- The README's quick starts ----

/// The README's sections whose ```sh block runs against a real server, in the README's order.
const README_RUN: [&str; 4] = [
    "## Quick start (curl)",
    "## Quick start (CLI)",
    "## People",
    "## Quick start (gRPC)",
];
/// The one block that is not run: it starts the server and the test suite themselves.
const README_NOT_RUN: &str = "## Run it, test it";
/// The placeholder of the curl quick start for the bootstrap token the server printed.
const ADMIN_PLACEHOLDER: &str = "ADMIN=lk_pat_...";

/// The README's blocks of `sections`, joined in order, with the app's admin token in place of
/// the placeholder (which must be there once).
fn readme_script(sections: &[&str], admin_token: &str) -> String {
    let script = sections
        .iter()
        .map(|s| shell_block("README.md", s))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        script.matches(ADMIN_PLACEHOLDER).count(),
        1,
        "the README's quick start sets the bootstrap token with `{ADMIN_PLACEHOLDER}` once"
    );
    script.replace(ADMIN_PLACEHOLDER, &format!("ADMIN={admin_token}"))
}

/// A tool the README's blocks use, or a failed test saying how to get it: a test that did not
/// run is never reported as passed.
fn require(tool: &str, how: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "the README's commands need {tool}: {how}");
}

#[test]
fn every_sh_block_of_the_readme_is_run_by_a_test() {
    // Arrange
    let readme = page_text("README.md");

    // Act: the heading above each ```sh block.
    let mut heading = "";
    let mut blocks = Vec::new();
    for line in readme.lines() {
        if line.starts_with("## ") {
            heading = line;
        } else if line == "```sh" {
            blocks.push(heading);
        }
    }

    // Assert
    let mut expected = vec![README_NOT_RUN];
    expected.extend(README_RUN);
    assert_eq!(
        blocks, expected,
        "every ```sh block of the README is run (README_RUN) or named as not run, one per section"
    );
}

#[tokio::test]
async fn the_readme_curl_cli_and_people_quick_starts_run_as_written() {
    // Arrange: the blocks in the README's order, as a reader runs them in one terminal.
    require("jq", "apt-get install jq");
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let script = readme_script(&README_RUN[..3], &app.admin_token);

    // Act: exit status and every `# -> ` output checked.
    let stdout = run_walkthrough(
        &format!("{script}\nlatchkey token list --json"),
        &app,
        dir.path(),
    );

    // Assert: the person's token, from the People block, works.
    assert!(stdout.contains("\"tokens\""), "{stdout}");
    let listed: serde_json::Value = app
        .get("/v1/tokens?page_size=50", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let state_of = |name: &str| {
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {listed}"))["state"]
            .clone()
    };
    assert_eq!(state_of("ci deploy"), "revoked");
    assert_eq!(state_of("cli-demo"), "revoked");
}

/// The Python that has grpcio and grpcio-reflection: `LATCHKEY_TEST_PYTHON`, else the venv
/// `.ci/run` makes, else `python3` (as tests/api/python_client.rs).
fn python_with_grpc() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ci-venv/bin/python");
    let candidates = match std::env::var("LATCHKEY_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec![venv.to_string(), "python3".to_string()],
    };
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import grpc, grpc_reflection, google.protobuf"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Where grpcurl is not installed (Debian has no package), a stand-in for it on the official
/// Python grpcio client: the flags the README uses, parsed as strictly as grpcurl's (a header
/// split into two words is a stray argument), the response printed as grpcurl prints it (JSON,
/// lowerCamelCase names, default values left out, two-space indent), an RPC error as its `ERROR:`
/// block on stderr with exit status 64 + the code. It learns the API by server reflection only.
const GRPCURL_STAND_IN: &str = r#"
import json
import sys

USAGE = "usage: grpcurl -plaintext [-H 'name: value']... [-d JSON] HOST:PORT SERVICE/METHOD"


def fail(message):
    print(message, file=sys.stderr)
    print(USAGE, file=sys.stderr)
    sys.exit(2)


def main(argv):
    headers, data, plaintext, positional = [], None, False, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if positional or not arg.startswith("-"):
            positional.append(arg)
        elif arg.lstrip("-") == "plaintext":
            plaintext = True
        else:
            name, eq, value = arg.lstrip("-").partition("=")
            if name not in ("H", "d"):
                fail(f"this stand-in knows no flag {arg}")
            if not eq:
                i += 1
                if i == len(argv):
                    fail(f"flag needs an argument: -{name}")
                value = argv[i]
            if name == "H":
                headers.append(value)
            else:
                data = value
        i += 1
    if not plaintext:
        fail("this stand-in speaks no TLS: pass -plaintext")
    if len(positional) != 2 or "/" not in positional[1]:
        fail(f"want HOST:PORT SERVICE/METHOD, got {positional}")
    address = positional[0]
    service_name, method_name = positional[1].split("/", 1)
    metadata = []
    for header in headers:
        key, _, value = header.partition(":")
        metadata.append((key.strip().lower(), value.strip()))

    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(data or "{}", request_class())
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            response = call(request, metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            code = e.code()
            words = "".join(w.capitalize() for w in code.name.split("_"))
            print(f"ERROR:\n  Code: {words}\n  Message: {e.details()}", file=sys.stderr)
            sys.exit(64 + code.value[0])
        print(json.dumps(json_format.MessageToDict(response), indent=2, ensure_ascii=False))


main(sys.argv[1:])
"#;

/// A folder to put first on the PATH so that `grpcurl` runs: empty when grpcurl is installed,
/// else holding the stand-in; or a failed test saying how to get either.
fn grpcurl_dir() -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    let installed = Command::new("sh")
        .args(["-c", "command -v grpcurl"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        eprintln!("the gRPC quick start runs with the installed grpcurl");
        return dir;
    }
    let python = python_with_grpc().unwrap_or_else(|| {
        panic!(
            "the README's gRPC quick start needs grpcurl, or (as a stand-in) a Python with grpcio \
             and grpcio-reflection: `python3 -m venv target/ci-venv && target/ci-venv/bin/pip \
             install grpcio grpcio-reflection protobuf`, or LATCHKEY_TEST_PYTHON set to one; or \
             leave this test out: `cargo test -- --skip python_client`."
        )
    });
    eprintln!("grpcurl is not installed: the gRPC quick start runs with a stand-in on {python}");
    let stand_in = dir.path().join("grpcurl");
    std::fs::write(&stand_in, format!("#!{python}\n{GRPCURL_STAND_IN}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn the_readme_grpc_quick_start_runs_as_written_with_grpcurl_or_the_python_client() {
    // Arrange: the curl quick start first, as the reader did (it sets ADMIN), then the gRPC one.
    require("jq", "apt-get install jq");
    let grpcurl = grpcurl_dir();
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let script = readme_script(&[README_RUN[0], README_RUN[3]], &app.admin_token);
    let script = format!("cd {}\n{script}", dir.path().display());

    // Act
    let (ok, stdout, stderr) = run_block_with(
        &script,
        &app.database_url,
        &app.address,
        Some(grpcurl.path()),
    );

    // Assert: exit status, every `# -> ` output, and the token the gRPC block made and revoked.
    assert!(
        ok,
        "script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    check_promised_output(&script, &stdout);
    let listed: serde_json::Value = app
        .get("/v1/tokens?page_size=50", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let grpc_dev = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "grpc-dev")
        .unwrap_or_else(|| panic!("grpc-dev in {listed}"))
        .clone();
    assert_eq!(grpc_dev["state"], "revoked", "{grpc_dev}");
    assert_eq!(grpc_dev["type"], "pat", "{grpc_dev}");
}

// ---- The walk-throughs of the user's guide, and the files it ships ----

fn page_text(page: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page))
        .unwrap_or_else(|e| panic!("{page}: {e}"))
}

/// The outputs a block promises, in its `# -> ...` lines: every word of them (words with `…`,
/// which stand for ids, left out) must appear in stdout, in that order.
fn check_promised_output(script: &str, stdout: &str) {
    let mut at = 0;
    for line in script.lines() {
        let Some(promised) = line.trim_start().strip_prefix("# -> ") else {
            continue;
        };
        for word in promised.split_whitespace().filter(|w| !w.contains('…')) {
            match stdout[at..].find(word) {
                Some(i) => at += i + word.len(),
                None => panic!(
                    "the docs promise {word:?} (from {promised:?}) after byte {at} of:\n{stdout}"
                ),
            }
        }
    }
}

/// Runs a walk-through in `dir` (its working folder) against `app`, with the default database
/// path of the docs pointing at the app's, and checks its exit status and promised output.
fn run_walkthrough(script: &str, app: &crate::helpers::TestApp, dir: &Path) -> String {
    let db_path = app.database_url.trim_start_matches("sqlite://");
    let script =
        format!("cd {}\n{}", dir.display(), script).replace("latchkey-data/latchkey.db", db_path);
    let (ok, stdout, stderr) = run_block(&script, &app.database_url, &app.address);
    assert!(
        ok,
        "script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    check_promised_output(&script, &stdout);
    stdout
}

/// Whether a tool the walk-through needs is installed; outside CI a missing one skips the test.
/// Asserts that `tool` is installed: a test that needs it fails without it (never passes unrun),
/// saying how to install it or how to leave the test out.
fn have(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: `apt-get install -y --no-install-recommends {package}` (bash \
         .ci/run does), or leave this test out with `cargo test -- --skip docs::`",
        package = if tool == "promtool" {
            "prometheus"
        } else {
            tool
        }
    );
}

/// The code block (fenced as `fence`) after `heading` in docs/clients.md.
fn clients_md_block(heading: &str, fence: &str) -> String {
    let page = page_text("docs/clients.md");
    let after = &page[page.find(heading).expect(heading)..];
    let open = format!("```{fence}\n");
    let start = after.find(&open).expect("a code block") + open.len();
    after[start..start + after[start..].find("```").expect("its end")].to_string()
}

/// The bearers the clients.md examples are run with: one holding `tokens:read`, one holding
/// only `audit:read`, one revoked.
async fn clients_md_bearers(app: &crate::helpers::TestApp) -> [String; 3] {
    let (reader, _) = app
        .token_with(&app.admin_token, "reader", &["tokens:read"])
        .await;
    let (auditor, _) = app
        .token_with(&app.admin_token, "auditor", &["audit:read"])
        .await;
    let (gone, view) = app
        .token_with(&app.admin_token, "gone", &["tokens:read"])
        .await;
    let path = format!("/v1/tokens/{}", view["id"].as_str().unwrap());
    assert!(
        app.delete(&path, &app.admin_token)
            .await
            .status()
            .is_success()
    );
    [reader, auditor, gone]
}

/// What every clients.md example prints for the reader, the auditor, the revoked one, a Basic
/// header and none (requiring `tokens:read`), then the reader's scopes as `scopes` spells them,
/// then the reader against a Latchkey that does not answer.
fn assert_clients_md_answers(out: &std::process::Output, scopes: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["200", "403", "401", "401", "401", scopes, "503"]
    );
}

#[tokio::test]
async fn the_python_example_of_clients_md_answers_as_documented() {
    // Arrange: the three bearers; no server on port 1.
    let app = spawn_app().await;
    let example = clients_md_block("## An example", "python");
    let [reader, auditor, gone] = clients_md_bearers(&app).await;
    let script = format!(
        "{example}\nLATCHKEY = {address:?}\n\
         for header in ['Bearer {reader}', 'Bearer {auditor}', 'Bearer {gone}', 'Basic x', None]:\n\
         \x20   print(authorize(header, ['tokens:read'])[0])\n\
         print(authorize('Bearer {reader}', ['tokens:read'])[1]['scopes'])\n\
         LATCHKEY = 'http://127.0.0.1:1'\n\
         print(authorize('Bearer {reader}', ['tokens:read'])[0])\n",
        address = app.address
    );

    // Act
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");

    // Assert
    assert_clients_md_answers(&out, "['tokens:read']");
}

#[tokio::test]
async fn the_node_example_of_clients_md_answers_as_documented() {
    // Arrange: the three bearers; no server on port 1.
    let app = spawn_app().await;
    let example = clients_md_block("## The same in Node.js", "javascript").replacen(
        "const LATCHKEY",
        "let LATCHKEY",
        1,
    );
    let [reader, auditor, gone] = clients_md_bearers(&app).await;
    let script = format!(
        "{example}\nLATCHKEY = {address:?};\n(async () => {{\n\
         for (const h of ['Bearer {reader}', 'Bearer {auditor}', 'Bearer {gone}', 'Basic x', undefined]) \
         console.log((await authorize(h, ['tokens:read']))[0]);\n\
         console.log(JSON.stringify((await authorize('Bearer {reader}', ['tokens:read']))[1].scopes));\n\
         LATCHKEY = 'http://127.0.0.1:1';\n\
         console.log((await authorize('Bearer {reader}', ['tokens:read']))[0]);\n}})();\n",
        address = app.address
    );

    // Act
    let out = Command::new("node")
        .args(["-e", &script])
        .output()
        .expect("node (CI installs it for the browser tests)");

    // Assert
    assert_clients_md_answers(&out, "[\"tokens:read\"]");
}

/// A Go program calling the Go example of docs/clients.md (package `latchkeyauth`): the latchkey
/// address, then one `Authorization` value per line of output; then the scopes of the first,
/// then the first again against a Latchkey that does not answer.
const GO_CALLER: &str = r#"package main

import (
	"fmt"
	"os"
	"strings"

	"example/latchkeyauth"
)

func main() {
	latchkeyauth.Latchkey = os.Args[1]
	required := []string{"tokens:read"}
	for _, h := range os.Args[2:] {
		code, _ := latchkeyauth.Authorize(h, required)
		fmt.Println(code)
	}
	_, v := latchkeyauth.Authorize(os.Args[2], required)
	fmt.Println(strings.Join(v.Scopes, ","))
	latchkeyauth.Latchkey = "http://127.0.0.1:1"
	code, _ := latchkeyauth.Authorize(os.Args[2], required)
	fmt.Println(code)
}
"#;

#[tokio::test]
async fn the_go_example_of_clients_md_answers_as_documented() {
    // Arrange: the example as a package of a module of its own, offline; the three bearers.
    let app = spawn_app().await;
    let example = clients_md_block("## The same in Go", "go");
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("latchkeyauth")).unwrap();
    std::fs::write(dir.path().join("latchkeyauth/latchkeyauth.go"), example).unwrap();
    std::fs::write(dir.path().join("main.go"), GO_CALLER).unwrap();
    std::fs::write(dir.path().join("go.mod"), "module example\n\ngo 1.19\n").unwrap();
    let [reader, auditor, gone] = clients_md_bearers(&app).await;
    let headers = [
        format!("Bearer {reader}"),
        format!("Bearer {auditor}"),
        format!("Bearer {gone}"),
        "Basic x".to_string(),
        String::new(),
    ];

    // Act: the build cache kept under target/, so later runs do not compile net/http again.
    let cache = concat!(env!("CARGO_TARGET_TMPDIR"), "/go-cache");
    let out = Command::new("go")
        .args(["run", "."])
        .arg(&app.address)
        .args(&headers)
        .current_dir(dir.path())
        .env("GOCACHE", cache)
        .env("GOPATH", dir.path().join("gopath"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("go (CI installs golang-go)");

    // Assert
    assert_clients_md_answers(&out, "tokens:read");
}

#[tokio::test]
async fn the_cli_first_session_runs_as_written() {
    // Arrange
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let script = shell_block("docs/cli.md", "## A first session");

    // Act + Assert
    run_walkthrough(&script, &app, dir.path());
}

#[tokio::test]
async fn the_gateway_check_by_hand_runs_as_written() {
    // Arrange
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let script = shell_block("docs/gateway.md", "## Try the check by hand");

    // Act + Assert
    run_walkthrough(&script, &app, dir.path());
}

#[test]
fn the_nginx_config_in_gateway_md_is_the_tested_example() {
    // Arrange: tests/api/nginx.rs runs examples/nginx/latchkey.conf with a real nginx.
    let page = page_text("docs/gateway.md");
    let example = page_text("examples/nginx/latchkey.conf");
    let start = page.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let len = page[start..].find("```").expect("its end");

    // Act
    let shown = &page[start..start + len];
    let tested = &example[example.find("upstream latchkey").expect("the upstream")..];

    // Assert
    assert_eq!(
        shown.trim_end(),
        tested.trim_end(),
        "docs/gateway.md must show examples/nginx/latchkey.conf from `upstream latchkey` on"
    );
}

#[tokio::test]
async fn the_health_commands_in_operations_md_run_as_written() {
    // Arrange
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let script = shell_block("docs/operations.md", "## Health");

    // Act + Assert
    run_walkthrough(&script, &app, dir.path());
}

#[tokio::test]
async fn the_sqlite_backup_and_restore_in_operations_md_work_as_written() {
    have("sqlite3");
    // Arrange: a token before the backup, another after it; SQLite whatever the suite's backend.
    let mut app = crate::helpers::spawn_sqlite_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let page = page_text("docs/operations.md");
    let backup = shell_block("docs/operations.md", "## Backup and restore");
    let restore_at = page
        .find("To restore, stop the server")
        .expect("the restore step");
    let restore = {
        let after = &page[restore_at..];
        let start = after.find("```sh\n").unwrap() + "```sh\n".len();
        after[start..start + after[start..].find("```").unwrap()].to_string()
    };
    let (before, _) = app
        .token_with(&app.admin_token, "before the backup", &["tokens:read"])
        .await;

    // Act: back up while the server runs, mint another, stop, restore, start again.
    run_walkthrough(&backup, &app, dir.path());
    let (after, _) = app
        .token_with(&app.admin_token, "after the backup", &["tokens:read"])
        .await;
    assert!(app.stop_gracefully());
    run_walkthrough(&restore, &app, dir.path());
    let restored = app.restart(&[]).await;

    // Assert
    assert_eq!(restored.verify(&before, &[]).await["valid"], true);
    assert_eq!(restored.verify(&after, &[]).await["valid"], false);
}

/// Every `latchkey_*` metric name that `src/` registers (a literal on a line with
/// `counter!(`, `histogram!(` or `gauge!(`), with every string literal of `src/`.
fn exported_metrics() -> (Vec<String>, String) {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
                out.push('\n');
            }
        }
    }
    let mut src = String::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut src);
    let mut names: Vec<String> = src
        .lines()
        .filter(|l| l.contains("counter!(") || l.contains("histogram!(") || l.contains("gauge!("))
        .flat_map(|l| metric_names(l).into_iter())
        .collect();
    names.sort();
    names.dedup();
    (names, src)
}

/// The `latchkey_[a-z0-9_]+` words of a text.
fn metric_names(text: &str) -> Vec<String> {
    text.match_indices("latchkey_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| n.len() > "latchkey_".len())
        .collect()
}

#[test]
fn the_dashboard_alerts_and_metrics_table_name_only_metrics_the_server_exports() {
    // Arrange
    let (exported, src) = exported_metrics();
    assert!(exported.len() >= 10, "{exported:?}");
    let ops = page_text("docs/operations.md");
    let metrics_section = {
        let start = ops.find("## Metrics").expect("## Metrics");
        let end = ops[start + 3..]
            .find("\n## ")
            .map_or(ops.len(), |e| start + 3 + e);
        ops[start..end].to_string()
    };
    let dashboard = page_text("docs/grafana/latchkey.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts = page_text("docs/prometheus/alerts.yml");

    // Act
    let mut problems = Vec::new();
    for (file, text) in [
        ("docs/operations.md ## Metrics", &metrics_section),
        ("docs/grafana/latchkey.json", &dashboard),
        ("docs/prometheus/alerts.yml", &alerts),
    ] {
        for name in metric_names(text) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| exported.iter().any(|e| e == b))
                .unwrap_or(&name);
            if !exported.iter().any(|e| e == base) {
                problems.push(format!("{file} names {name}, which src/ does not export"));
            }
        }
        for label in ["result=\"", "limit=\""] {
            for (i, _) in text.match_indices(label) {
                let value: String = text[i + label.len()..]
                    .chars()
                    .take_while(|c| *c != '"')
                    .collect();
                if !src.contains(&format!("\"{value}\"")) {
                    problems.push(format!(
                        "{file}: {label}{value}\" is no label value of src/"
                    ));
                }
            }
        }
    }
    for name in &exported {
        if !metrics_section.contains(&format!("`{name}")) {
            problems.push(format!(
                "docs/operations.md ## Metrics does not describe {name}"
            ));
        }
    }

    // Assert
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn promtool_accepts_the_alert_rules_and_the_dashboard_queries() {
    have("promtool");
    // Arrange: the dashboard's queries as recording rules, Grafana's variables filled in.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&page_text("docs/grafana/latchkey.json")).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, panel) in dashboard["panels"].as_array().unwrap().iter().enumerate() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            rules.push_str(&format!(
                "      - record: dashboard_panel_{i}\n        expr: {}\n",
                serde_json::Value::String(expr)
            ));
        }
    }
    let dir = tempfile::TempDir::new().unwrap();
    let queries = dir.path().join("dashboard.yml");
    std::fs::write(&queries, rules).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("promtool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Act + Assert
    let alerts = root.join("docs/prometheus/alerts.yml");
    let tests = root.join("docs/prometheus/alerts_test.yml");
    run(&["check".as_ref(), "rules".as_ref(), alerts.as_os_str()]);
    run(&["test".as_ref(), "rules".as_ref(), tests.as_os_str()]);
    run(&["check".as_ref(), "rules".as_ref(), queries.as_os_str()]);
}

/// The anchor GitHub gives a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line));
        }
    }
    out
}

#[test]
fn every_link_of_the_readme_and_the_docs_leads_somewhere() {
    // Arrange
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs.iter().cloned());
    let readme = page_text("README.md");

    // Act
    let mut problems = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !dest.exists() {
                problems.push(format!("{}: {target} does not exist", page.display()));
                continue;
            }
            if !anchor.is_empty() && dest.extension().is_some_and(|e| e == "md") {
                let dest_text = std::fs::read_to_string(&dest).unwrap();
                if !anchors(&dest_text).iter().any(|a| a == anchor) {
                    problems.push(format!(
                        "{}: no heading #{anchor} in {file}",
                        page.display()
                    ));
                }
            }
        }
    }
    for doc in &docs {
        let name = format!("docs/{}", doc.file_name().unwrap().to_string_lossy());
        if !readme.contains(&format!("]({name})")) {
            problems.push(format!("README.md does not link to {name}"));
        }
    }
    let lines = readme.lines().count();
    if lines >= 200 {
        problems.push(format!("README.md has {lines} lines; keep it under 200"));
    }

    // Assert
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
