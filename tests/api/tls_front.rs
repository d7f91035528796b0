//! Latchkey behind the shipped `examples/nginx/latchkey-tls.conf`, run by a real nginx with a
//! certificate from a test authority (made by `openssl`): the `latchkey` client commands and
//! `crates/latchkey-client` speak `https://` to it, REST through `proxy_pass` and gRPC (the
//! change stream) through `grpc_pass`.

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::client_crate::{Protected, first_refusal, wait_until_cached, watch_token};
use crate::helpers::{BIN, TestApp, spawn_app_with, test_certificates};
use crate::nginx::{Nginx, free_port, nginx_binary, run_nginx};

const EXAMPLE: &str = include_str!("../../examples/nginx/latchkey-tls.conf");

/// nginx serving the example in front of one Latchkey, and the test authority's files.
struct TlsFront {
    _nginx: Nginx,
    /// `https://127.0.0.1:PORT`
    url: String,
    dir: tempfile::TempDir,
}

impl TlsFront {
    /// The authority that signed nginx's certificate.
    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// An authority that signed nothing here.
    fn other_ca(&self) -> std::path::PathBuf {
        self.dir.path().join("other-ca.crt")
    }
}

/// The example, with its certificate paths, port and upstream made this test's, run by nginx;
/// `None` (the test then returns) where nginx or openssl is missing outside CI.
async fn tls_front(app: &TestApp) -> Option<TlsFront> {
    let bin = nginx_binary()?;
    let dir = tempfile::TempDir::new().unwrap();
    if let Err(why) = test_certificates(dir.path()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have openssl: {why}"
        );
        eprintln!("skipping: no test certificates: {why}");
        return None;
    }
    let port = free_port();
    let d = dir.path().display();
    let site = EXAMPLE
        .replace("127.0.0.1:8080", app.address.trim_start_matches("http://"))
        // 127.0.0.2 too: an address of this host that the certificate does not name.
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port} ssl http2;\n    listen 127.0.0.2:{port} ssl http2;"),
        )
        .replace(
            "/etc/ssl/latchkey/fullchain.pem",
            &format!("{d}/server.crt"),
        )
        .replace("/etc/ssl/latchkey/privkey.pem", &format!("{d}/server.key"));
    assert!(site.contains(&format!("{d}/server.key")), "{site}");
    let address = format!("127.0.0.1:{port}");
    let nginx = run_nginx(&bin, dir.path(), &site, &address).await;
    Some(TlsFront {
        _nginx: nginx,
        url: format!("https://{address}"),
        dir,
    })
}

/// Runs `latchkey <args>` with `token` and the environment given, and nothing of the test's
/// own `LATCHKEY_*` or `SSL_*`.
fn latchkey(token: &str, args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LATCHKEY_URL")
        .env_remove("LATCHKEY_CA_CERT")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("LATCHKEY_TOKEN", token)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_client_commands_speak_https_through_nginx_with_the_authority_given() {
    // Arrange
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let ca = front.ca();

    // Act: the authority by flag, by LATCHKEY_CA_CERT, and as the only one by SSL_CERT_FILE.
    let ca_flag = ca.to_str().unwrap();
    let created = latchkey(
        &app.admin_token,
        &[
            "token",
            "create",
            "--name",
            "over tls",
            "--json",
            "--url",
            &front.url,
            "--ca-cert",
            ca_flag,
        ],
        &[],
    );
    let by_env = latchkey(
        &app.admin_token,
        &["token", "list", "--url", &front.url, "--json"],
        &[("LATCHKEY_CA_CERT", ca.as_os_str())],
    );
    let other = front.other_ca();
    let adds_to_ssl_cert_file = latchkey(
        &app.admin_token,
        &["token", "list", "--url", &front.url, "--ca-cert", ca_flag],
        &[("SSL_CERT_FILE", other.as_os_str())],
    );
    let by_ssl_cert_file = latchkey(
        &app.admin_token,
        &["audit", "list", "--url", &front.url, "--json"],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    );

    // Assert
    assert!(created.status.success(), "{}", text(&created.stderr));
    let view: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = view["token"]["id"].as_str().unwrap().to_string();
    assert!(by_env.status.success(), "{}", text(&by_env.stderr));
    assert!(text(&by_env.stdout).contains(&id));
    assert!(
        adds_to_ssl_cert_file.status.success(),
        "{}",
        text(&adds_to_ssl_cert_file.stderr)
    );
    assert!(
        by_ssl_cert_file.status.success(),
        "{}",
        text(&by_ssl_cert_file.stderr)
    );
    assert!(text(&by_ssl_cert_file.stdout).contains(&id));
}

#[tokio::test]
async fn a_server_whose_authority_is_not_trusted_is_refused_with_the_reason_and_no_token() {
    // Arrange
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let not_pem = front.dir.path().join("server.csr.txt");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let list = |env: &[(&str, &OsStr)], more: &[&str]| {
        let mut args = vec!["token", "list", "--url", front.url.as_str()];
        args.extend(more);
        latchkey(&app.admin_token, &args, env)
    };

    // Act
    let other_ca = list(&[], &["--ca-cert", front.other_ca().to_str().unwrap()]);
    let other_ca_file = front.other_ca();
    let ssl_cert_file_other = list(&[("SSL_CERT_FILE", other_ca_file.as_os_str())], &[]);
    let none_at_all: &[(&str, &OsStr)] = &[
        ("SSL_CERT_FILE", OsStr::new("/nonexistent/ca.pem")),
        ("SSL_CERT_DIR", OsStr::new("/nonexistent")),
    ];
    let https_without_authorities = list(none_at_all, &[]);
    let http_without_authorities = latchkey(
        &app.admin_token,
        &["token", "list", "--url", &app.address],
        none_at_all,
    );
    let not_a_certificate = list(&[], &["--ca-cert", not_pem.to_str().unwrap()]);
    let missing_file = list(&[], &["--ca-cert", "/nonexistent/ca.pem"]);
    let other_name = latchkey(
        &app.admin_token,
        &[
            "token",
            "list",
            "--url",
            &front.url.replace("127.0.0.1", "127.0.0.2"),
            "--ca-cert",
            front.ca().to_str().unwrap(),
        ],
        &[],
    );
    let other_scheme = latchkey(
        &app.admin_token,
        &["token", "list", "--url", "ftp://127.0.0.1:1"],
        &[],
    );

    // Assert
    const TRUST_HINT: &str = "its certificate is not trusted (name its authority with \
        --ca-cert): error sending request for url";
    assert!(text(&other_ca.stderr).ends_with("invalid peer certificate: UnknownIssuer\n"));
    for (out, says) in [
        (&other_ca, TRUST_HINT),
        (&ssl_cert_file_other, TRUST_HINT),
        (
            &https_without_authorities,
            "loading the certificate authorities to trust",
        ),
        (
            &other_name,
            "its certificate is for another name (use one in --url that it holds): error sending",
        ),
        (&not_a_certificate, "holds no PEM certificate"),
        (&missing_file, "reading --ca-cert /nonexistent/ca.pem"),
        (&other_scheme, "must start with http:// or https://"),
    ] {
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(says), "{err}");
        assert!(!err.contains(&app.admin_token));
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Plain HTTP needs no authority at all (a container without ca-certificates).
    assert!(
        http_without_authorities.status.success(),
        "{}",
        text(&http_without_authorities.stderr)
    );
}

#[tokio::test]
async fn the_client_crate_verifies_over_https_and_hears_a_revocation_through_grpc_pass() {
    // Arrange: the crate's example service, trusting the test authority by SSL_CERT_FILE.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let ca = front.ca();
    let example = Protected::start_with_env(
        &front.url,
        &watch_token(&app).await,
        &["tokens:read"],
        &[],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    );
    let (token, view) = app
        .token_with(&app.admin_token, "behind tls", &["tokens:read"])
        .await;
    // Cached answers and no more calls to the server: the change stream is up, over TLS.
    wait_until_cached(&app, &example, &token).await;

    // Act
    let id = view["id"].as_str().unwrap();
    let res = app
        .delete(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (_, status) = first_refusal(&example, &token, Instant::now(), Duration::from_secs(2)).await;

    // Assert
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_client_crate_trusts_an_authority_given_in_code_besides_the_systems() {
    // Arrange: the example given the test authority by --ca-cert (`ca_certificates`), with a
    // system store (SSL_CERT_FILE) that lacks it.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let (ca, other) = (front.ca(), front.other_ca());
    let watch = watch_token(&app).await;
    let example = Protected::start_with_env(
        &front.url,
        &watch,
        &["tokens:read"],
        &["--ca-cert", ca.to_str().unwrap()],
        &[("SSL_CERT_FILE", other.as_os_str())],
    );
    let (token, _) = app
        .token_with(&app.admin_token, "given in code", &["tokens:read"])
        .await;

    // And one given another authority in code while the system's (SSL_CERT_FILE) is the right
    // one: the given authorities add to the system's, never replace them.
    let system_has_it = Protected::start_with_env(
        &front.url,
        &watch,
        &["tokens:read"],
        &["--ca-cert", other.to_str().unwrap()],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    );

    // Act: answered 200 and then from the cache, once the change stream (gRPC, over TLS) is
    // up; wait_until_cached fails the test if either never happens.
    wait_until_cached(&app, &example, &token).await;
    wait_until_cached(&app, &system_has_it, &token).await;
    let statuses = [
        example.hello_status(&token).await,
        system_has_it.hello_status(&token).await,
    ];

    // Assert
    assert_eq!(statuses, [StatusCode::OK; 2]);
}

#[tokio::test]
async fn the_client_crates_rest_calls_check_the_certificate_its_name_and_its_authority() {
    // Arrange: the example above exercises gRPC; these are latchkey_client::Client's REST calls.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let (ca, other) = (
        std::fs::read(front.ca()).unwrap(),
        std::fs::read(front.other_ca()).unwrap(),
    );
    let misnamed_url = front.url.replace("127.0.0.1", "127.0.0.2");
    let (token, _) = app
        .token_with(&app.admin_token, "rest over tls", &["tokens:read"])
        .await;
    let verify = |url: &str, pem: &[u8]| {
        let client = latchkey_client::Client::new_with_ca_certificates(url, pem).unwrap();
        let token = token.clone();
        async move { client.verify(&token, &["tokens:read"]).await }
    };

    // Act
    let trusted = verify(&front.url, &ca).await;
    let misnamed = verify(&misnamed_url, &ca).await;
    let untrusted = verify(&front.url, &other).await;

    // Assert
    assert!(trusted.as_ref().is_ok_and(|v| v.valid), "{trusted:?}");
    for (refused, why) in [
        (misnamed, "not valid for name"),
        (untrusted, "UnknownIssuer"),
    ] {
        let e = refused.unwrap_err();
        assert!(
            matches!(&e, latchkey_client::Error::Unavailable(m) if m.contains(why)),
            "{e:?}"
        );
        assert!(!format!("{e:?}").contains(&token));
    }
}

#[tokio::test]
async fn the_client_crate_facing_an_untrusted_or_misnamed_certificate_answers_503_never_200() {
    // Arrange: one example trusting another authority, one reaching nginx by an address its
    // certificate does not name.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let (other, ca) = (front.other_ca(), front.ca());
    let watch = watch_token(&app).await;
    let untrusted = Protected::start_with_env(
        &front.url,
        &watch,
        &["tokens:read"],
        &[],
        &[("SSL_CERT_FILE", other.as_os_str())],
    );
    let misnamed = Protected::start_with_env(
        &front.url.replace("127.0.0.1", "127.0.0.2"),
        &watch,
        &["tokens:read"],
        &[],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    );
    let (token, _) = app
        .token_with(&app.admin_token, "untrusted path", &["tokens:read"])
        .await;

    // Act
    let statuses = [
        untrusted.hello_status(&token).await,
        misnamed.hello_status(&token).await,
    ];

    // Assert
    assert_eq!(statuses, [StatusCode::SERVICE_UNAVAILABLE; 2]);
}

#[tokio::test]
async fn the_tls_example_serves_health_and_keeps_metrics_to_latchkeys_own_port() {
    // Arrange
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let pem = std::fs::read(front.ca()).unwrap();
    let client = crate::helpers::reqwest_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap();

    // Act
    let health = client
        .get(format!("{}/healthz", front.url))
        .send()
        .await
        .unwrap();
    let metrics = client
        .get(format!("{}/metrics", front.url))
        .send()
        .await
        .unwrap();
    let direct = app
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await;

    // Assert
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(metrics.status(), StatusCode::FORBIDDEN);
    assert_eq!(direct.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_tls_in_front_commands_of_operations_md_run_as_written() {
    // Arrange: the docs' host and authority file made this test's.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let script = crate::docs::shell_block("docs/operations.md", "## TLS in front")
        .replace("https://latchkey.example.com", &front.url)
        .replace("/etc/ssl/latchkey/ca.pem", front.ca().to_str().unwrap());
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());

    // Act
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env_remove("LATCHKEY_URL")
        .env_remove("LATCHKEY_CA_CERT")
        .env_remove("SSL_CERT_FILE")
        .env("LATCHKEY_TOKEN", &app.admin_token)
        .output()
        .unwrap();

    // Assert: the bootstrap token, listed over TLS.
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("bootstrap"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn a_person_signs_in_to_the_console_through_the_tls_front_on_any_port() {
    // Arrange: a person with a password; a browser-like client that trusts the test authority,
    // follows no redirect, and sends the Origin a browser would (with the port).
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let Some(front) = tls_front(&app).await else {
        return;
    };
    let password = "front door password 42";
    let created: serde_json::Value = app
        .post(
            "/v1/users",
            &app.admin_token,
            serde_json::json!({ "email": "tls@example.com", "name": "Tee", "role": "member" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let setup = app
        .request(
            reqwest::Method::POST,
            "/v1/auth/setup",
            None,
            Some(serde_json::json!({
                "setup_token": created["setup_token"], "password": password
            })),
        )
        .await;
    assert_eq!(setup.status(), StatusCode::OK);
    let pem = std::fs::read(front.ca()).unwrap();
    let browser = crate::helpers::reqwest_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = serde_urlencoded::to_string([("email", "tls@example.com"), ("password", password)])
        .unwrap();

    // Act
    let login = browser
        .post(format!("{}/ui/login", front.url))
        .header("origin", &front.url)
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = login.status();
    let landing = login
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    let cookie = login
        .headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().to_string())
        .unwrap_or_default();
    let page = browser
        .get(format!("{}{landing}", front.url))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();

    // Assert: signed in (not "sent from another site"), with a Secure cookie that works.
    assert_eq!(status, StatusCode::SEE_OTHER, "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("tls@example.com"));
}

#[tokio::test]
async fn the_cli_follows_no_redirect_and_says_where_it_was_sent() {
    // Arrange
    let (url, elsewhere, to) = redirecting_server("/v1/auth/token").await;

    // Act: a password sent to the redirecting server.
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["login", "--url", &url, "--email", "a@example.com"])
            .env_remove("LATCHKEY_URL")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"secret password 42\n").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();

    // Assert
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "the server answered HTTP 308 to {to} (redirects are not followed"
        )),
        "{err}"
    );
    assert!(!err.contains("secret password 42"));
    assert_nothing_reached(&elsewhere);
}

#[tokio::test]
async fn the_client_crate_follows_no_redirect_so_the_token_goes_nowhere_else() {
    // Arrange
    let (url, elsewhere, to) = redirecting_server("/v1/tokens/verify").await;

    // Act
    let r = latchkey_client::Client::new(&url)
        .unwrap()
        .verify("lk_pat_secret", &[])
        .await;

    // Assert
    let e = r.unwrap_err();
    assert!(
        matches!(&e, latchkey_client::Error::Protocol(m) if m.contains("308") && m.contains(&to)),
        "{e:?}"
    );
    assert_nothing_reached(&elsewhere);
}

/// A server that answers every request with a 308 to `path` on another listener (plain HTTP,
/// as a misconfigured proxy might send even an https:// client), and that listener, which
/// accepts nothing: (the server's URL, the listener, the redirect's target).
async fn redirecting_server(path: &str) -> (String, std::net::TcpListener, String) {
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let to = format!("http://{}{path}", elsewhere.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let location = to.clone();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (
                    axum::http::StatusCode::PERMANENT_REDIRECT,
                    [(axum::http::header::LOCATION, location)],
                )
            }
        });
        let _ = axum::serve(listener, app).await;
    });
    (url, elsewhere, to)
}

/// No connection came to `listener` (it is non-blocking: an accept would find one waiting).
fn assert_nothing_reached(listener: &std::net::TcpListener) {
    let nothing = listener.accept().map(|_| ()).unwrap_err();
    assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);
}
