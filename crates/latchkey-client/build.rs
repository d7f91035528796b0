//! Compiles Latchkey's protobuf API with protox (pure Rust: no `protoc` needed), client side
//! only, from the same file the server serves.

/// Messages that carry a plaintext secret: prost derives no `Debug` for them; `src/lib.rs`
/// writes one that prints none of their fields.
const REDACTED: &[&str] = &[
    ".latchkey.auth.v1.CreateTokenResponse",
    ".latchkey.auth.v1.RotateTokenResponse",
    ".latchkey.auth.v1.ValidateTokenRequest",
    ".latchkey.auth.v1.ExchangePasswordRequest",
    ".latchkey.auth.v1.SetupPasswordRequest",
    ".latchkey.auth.v1.CreateUserResponse",
    ".latchkey.auth.v1.ChangePasswordRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/latchkey");
    let fds = protox::compile(["latchkey/auth/v1/auth.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .skip_debug(REDACTED)
        .compile_fds(fds)?;
    Ok(())
}
