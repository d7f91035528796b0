//! The shipped `examples/nginx/latchkey.conf`, run by a real nginx in front of a test upstream.
//! `.ci/run` installs nginx; on a developer machine without it the test says so and passes
//! only outside CI.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app_with;

const EXAMPLE: &str = include_str!("../../examples/nginx/latchkey.conf");

pub(crate) fn nginx_binary() -> Option<String> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string);
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must install nginx");
        eprintln!("skipping: nginx is not installed");
    }
    found
}

pub(crate) struct Nginx(pub(crate) Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test upstream that answers every request with the headers it received.
async fn echo_upstream() -> String {
    async fn echo(headers: HeaderMap) -> axum::Json<Value> {
        let h = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        axum::Json(json!({
            "token_id": h("x-latchkey-token-id"),
            "org_id": h("x-latchkey-org-id"),
            "scopes": h("x-latchkey-scopes"),
            "authorization": h("authorization"),
            "forwarded_for": h("x-forwarded-for"),
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(echo)).await;
    });
    addr.to_string()
}

async fn start_nginx(
    bin: &str,
    latchkey: &str,
    upstream: &str,
) -> (Nginx, String, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let site = EXAMPLE
        .replace("127.0.0.1:8080", latchkey)
        .replace("127.0.0.1:3000", upstream)
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
    let address = format!("127.0.0.1:{port}");
    let nginx = run_nginx(bin, dir.path(), &site, &address).await;
    (nginx, format!("http://{address}"), dir)
}

/// A free TCP port of 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs nginx with `site` (a server block) as its whole `http { }` configuration, its files in
/// `dir`, and waits until `address` accepts connections.
pub(crate) async fn run_nginx(
    bin: &str,
    dir: &std::path::Path,
    site: &str,
    address: &str,
) -> Nginx {
    let d = dir.display();
    std::fs::write(dir.join("site.conf"), site).unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    panic!("nginx did not start:\n{log}");
}

#[tokio::test]
async fn requests_through_nginx_reach_the_upstream_only_with_a_valid_token_and_its_identity() {
    let Some(bin) = nginx_binary() else { return };
    // Arrange
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let (token, view) = app
        .token_with(&app.admin_token, "through nginx", &["tokens:read"])
        .await;
    let (reporter, _) = app
        .token_with(&app.admin_token, "reporter", &["audit:read"])
        .await;
    let upstream = echo_upstream().await;
    let (_nginx, base, _dir) =
        start_nginx(&bin, app.address.trim_start_matches("http://"), &upstream).await;
    let client = crate::helpers::reqwest_builder().build().unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut rb = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.header("x-forwarded-for", "198.51.100.7").send()
    };

    // Act + Assert: a valid token reaches the upstream with the identity headers set.
    let ok = get("/v1/things", Some(&token)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let seen: Value = ok.json().await.unwrap();
    assert_eq!(seen["token_id"], view["id"]);
    assert_eq!(seen["org_id"], app.org_id.to_string());
    assert_eq!(seen["scopes"], "tokens:read");
    assert_eq!(
        seen["authorization"],
        Value::Null,
        "the key itself is not passed on"
    );
    assert!(
        seen["forwarded_for"]
            .as_str()
            .unwrap()
            .starts_with("198.51.100.7")
    );

    // Invalid or missing -> 401 with the challenge; lacking the location's scope -> 403.
    let invalid = get("/v1/things", Some("lk_pat_garbage")).await.unwrap();
    assert_eq!(invalid.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(invalid.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get("/v1/things", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/reports/q3", Some(&token)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/reports/q3", Some(&reporter)).await.unwrap().status(),
        StatusCode::OK
    );

    // Revoked -> 401 on the very next request.
    app.delete(
        &format!("/v1/tokens/{}", view["id"].as_str().unwrap()),
        &app.admin_token,
    )
    .await;
    assert_eq!(
        get("/v1/things", Some(&token)).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
