//! Compiles the protobuf APIs with protox (pure Rust: no `protoc` needed): Latchkey's own,
//! ibex's (served with `--compat-ibex`) and the subset of Envoy's external authorization API
//! (`envoy.service.auth.v3.Authorization`), and keeps each one's encoded descriptor set for server
//! reflection and the contract tests.

use std::path::PathBuf;

use prost::Message;

/// Messages that carry a plaintext secret (a password, a token or a setup token/link). prost
/// derives no `Debug` for them; `src/grpc/redacted.rs` implements it by hand, with the secret
/// fields printed as `[redacted]`. A message with a new secret field belongs here too.
const REDACTED: &[&str] = &[
    ".latchkey.auth.v1.CreateTokenResponse",
    ".latchkey.auth.v1.RotateTokenResponse",
    ".latchkey.auth.v1.ValidateTokenRequest",
    ".latchkey.auth.v1.ExchangePasswordRequest",
    ".latchkey.auth.v1.SetupPasswordRequest",
    ".latchkey.auth.v1.CreateUserResponse",
    ".latchkey.auth.v1.ChangePasswordRequest",
    ".ibex.auth.v1.CreateTokenResponse",
    ".ibex.auth.v1.ValidateTokenRequest",
    // Its headers carry the bearer Envoy checks.
    ".envoy.service.auth.v3.AttributeContext.HttpRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    git_commit();
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migrations; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Each API has a descriptor set of its own, so reflection lists the ibex service only on a
    // server that serves it (`--compat-ibex`).
    let mut fds = protox::compile(["latchkey/auth/v1/auth.proto"], ["proto"])?;
    std::fs::write(out.join("latchkey_descriptor.bin"), fds.encode_to_vec())?;
    let ibex = protox::compile(["ibex/auth/v1/auth.proto"], ["proto"])?;
    std::fs::write(out.join("ibex_descriptor.bin"), ibex.encode_to_vec())?;
    let envoy = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])?;
    std::fs::write(out.join("envoy_descriptor.bin"), envoy.encode_to_vec())?;
    // One code generation over all three, each file once (they share google/protobuf imports).
    for file in ibex.file.into_iter().chain(envoy.file) {
        if !fds.file.iter().any(|f| f.name == file.name) {
            fds.file.push(file);
        }
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(REDACTED)
        .compile_fds(fds)?;
    Ok(())
}

/// Sets `LATCHKEY_GIT_COMMIT` (shown by `latchkey --version`) to the short hash of the checkout's
/// HEAD, or `unknown` outside a git checkout or without git. Rebuilds when HEAD moves: the HEAD
/// file (a checkout) and the branch it names (a commit).
fn git_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LATCHKEY_GIT_COMMIT={commit}");
    // Only paths that exist: cargo reruns a script whose watched path is missing every time.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
