//! Starting servers for tests: the real binary on a free port with its own SQLite file (and its
//! logs captured), or the same application in-process with a controllable clock.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use latchkey::clock::{Clock, ManualClock};
use latchkey::service::{Authority, AuthorityConfig};
use latchkey::startup::{Application, Settings};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// A builder of reqwest clients. reqwest is built with rustls and no crypto provider of its own
/// (see Cargo.toml): a client built before one is installed panics, so this installs ring's.
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// The tests' HTTP client. Its idle connections are dropped after 5 s, before the server's header
/// timeout (10 s) closes them: a request sent on a connection as the server closes it fails with
/// `IncompleteMessage` (seen after a walkthrough that ran longer than 10 s on a busy machine).
fn http_client() -> reqwest::Client {
    reqwest_builder()
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("building the tests' HTTP client")
}

/// A running server under test. The process is killed (or the task stopped) on drop.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The bootstrap admin token (platform:admin and every system bit) of the `default` org.
    pub admin_token: String,
    pub org_id: Uuid,
    pub dir: Arc<TempDir>,
    /// The database the server runs on: a SQLite file in `dir`, or (with
    /// `LATCHKEY_TEST_BACKEND=postgres`) a fresh PostgreSQL database.
    pub database_url: String,
    db: Option<Arc<TestDatabase>>,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub clock: Option<Arc<ManualClock>>,
}

/// Every rate limit off (each test that checks one turns it on with a flag).
pub const NO_RATE_LIMITS: [(&str, &str); 6] = [
    ("LATCHKEY_RATE_LIMIT_MINT_PER_HOUR", "0"),
    ("LATCHKEY_RATE_LIMIT_MINT_PER_TOKEN_PER_HOUR", "0"),
    ("LATCHKEY_RATE_LIMIT_LOGIN_PER_15M", "0"),
    ("LATCHKEY_RATE_LIMIT_PER_SECOND", "0"),
    ("LATCHKEY_RATE_LIMIT_FAILED_VERIFY_PER_MINUTE", "0"),
    ("LATCHKEY_RATE_LIMIT_LEAKED_PER_MINUTE", "0"),
];

pub fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("latchkey.db").display())
}

/// Starts the real binary with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the real binary with a fresh database and extra `serve` flags.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    spawn_app_with_env(extra, &[]).await
}

/// Starts the real binary with a fresh database, extra flags and environment variables.
pub async fn spawn_app_with_env(extra: &[&str], env: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let (url, db) = fresh_database(dir.path()).await;
    spawn_process(&url, dir, db, extra, env).await
}

/// Starts the real binary on a fresh SQLite database, whatever `LATCHKEY_TEST_BACKEND` says:
/// for what only SQLite has (its file, `latchkey backup`).
pub async fn spawn_sqlite_app() -> TestApp {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    spawn_process(&db_url(dir.path()), dir, None, &[], &[]).await
}

/// Starts the real binary on the SQLite file at `url` (in `dir`, kept as long as the app).
pub async fn spawn_sqlite_app_on(url: &str, dir: Arc<TempDir>) -> TestApp {
    spawn_process(url, dir, None, &[], &[]).await
}

/// A fresh database for one test: a SQLite file in `dir`, or, when `LATCHKEY_TEST_BACKEND` is
/// `postgres`, a new database on the server of [`postgres_admin_url`] (`.ci/run` runs the
/// whole suite both ways).
async fn fresh_database(dir: &Path) -> (String, Option<Arc<TestDatabase>>) {
    if std::env::var("LATCHKEY_TEST_BACKEND").as_deref() == Ok("postgres") {
        let admin = postgres_admin_url("LATCHKEY_TEST_BACKEND=postgres");
        let db = TestDatabase::create(&admin).await;
        (db.url.clone(), Some(Arc::new(db)))
    } else {
        (db_url(dir), None)
    }
}

/// Starts `latchkey serve` on `url` and waits for its `listening` line; reads the bootstrap
/// token (printed on a first start only) from its stderr.
async fn spawn_process(
    url: &str,
    dir: Arc<TempDir>,
    db: Option<Arc<TestDatabase>>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> TestApp {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--database-url",
            url,
        ])
        .args(extra)
        .env("LATCHKEY_LOG", "info")
        // Rate limits off unless a test turns one on: the suite makes many calls from 127.0.0.1.
        .envs(NO_RATE_LIMITS)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latchkey");
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let _ = tx.send(v["fields"]["address"].as_str().unwrap_or("").to_string());
                }
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("server did not start; logs:\n{}", logs.lock().unwrap()));
    let admin_token = logs
        .lock()
        .unwrap()
        .lines()
        .find(|l| !l.starts_with('{') && l.contains("_pat_"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let mut app = TestApp {
        address: format!("http://{addr}"),
        client: http_client(),
        admin_token,
        org_id: Uuid::nil(),
        dir,
        database_url: url.to_string(),
        db,
        child: Some(child),
        logs,
        shutdown: None,
        clock: None,
    };
    if !app.admin_token.is_empty() {
        app.org_id = app
            .org_of(&app.admin_token.clone())
            .await
            .unwrap_or(Uuid::nil());
    }
    app
}

/// Runs the application in-process with a [`ManualClock`], for rules that depend on time.
pub async fn spawn_with_clock() -> TestApp {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let clock = Arc::new(ManualClock::new());
    let (url, db) = fresh_database(dir.path()).await;
    // Bootstrap first, so the token is in hand and the application finds a non-empty database.
    let authority = Authority::new(
        latchkey::store::connect(&url).await.unwrap(),
        AuthorityConfig::default(),
    );
    let boot = authority.bootstrap("default", clock.now()).await.unwrap();
    let settings = Settings {
        database_url: url.clone(),
        db_pool: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        authority: AuthorityConfig::default(),
        usage_flush_interval: Duration::from_millis(100),
        max_body_bytes: 65_536,
        trusted_proxies: Vec::new(),
        secure_cookies: true,
        limits: Default::default(),
        compat_ibex: false,
    };
    let app = Application::build(settings, clock.clone()).await.unwrap();
    let addr = app.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://{addr}"),
        client: http_client(),
        admin_token: boot.plaintext.expose().clone(),
        org_id: boot.org.id,
        dir,
        database_url: url,
        db,
        child: None,
        logs: Arc::new(Mutex::new(String::new())),
        shutdown: Some(tx),
        clock: Some(clock),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// The value of the first `/metrics` line starting with `line_prefix` (name and labels).
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let text = self
            .request(Method::GET, "/metrics", None, None)
            .await
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line_prefix} missing:\n{text}"))
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn stop_gracefully(&mut self) -> bool {
        let mut c = self.child.take().expect("a process-backed app");
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        c.wait().expect("wait").success()
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.address, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await.expect("request")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Sends a raw body with the given content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.client
            .post(format!("{}{}", self.address, path))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a token with `body`, asserting 201; returns (plaintext, token view).
    pub async fn create_token(&self, token: &str, body: Value) -> (String, Value) {
        let res = self.post("/v1/tokens", token, body).await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{v}");
        (
            v["plaintext"].as_str().unwrap().to_string(),
            v["token"].clone(),
        )
    }

    /// Creates a token with these scopes in the caller's org.
    pub async fn token_with(&self, token: &str, name: &str, scopes: &[&str]) -> (String, Value) {
        self.create_token(token, json!({ "name": name, "scopes": scopes }))
            .await
    }

    pub async fn verify(&self, token: &str, required: &[&str]) -> Value {
        let res = self
            .request(
                Method::POST,
                "/v1/tokens/verify",
                None,
                Some(json!({ "token": token, "required_scopes": required })),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    async fn org_of(&self, token: &str) -> Option<Uuid> {
        let v = self.verify(token, &[]).await;
        v["org_id"].as_str().and_then(|s| s.parse().ok())
    }

    /// A second org with an org admin token (every system bit but platform:admin).
    pub async fn second_org(&self, name: &str) -> (Uuid, String) {
        let res = self
            .post("/v1/orgs", &self.admin_token, json!({ "name": name }))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let org: Value = res.json().await.unwrap();
        let org_id: Uuid = org["id"].as_str().unwrap().parse().unwrap();
        let (t, _) = self
            .create_token(
                &self.admin_token,
                json!({
                    "org_id": org_id,
                    "name": "org admin",
                    "scopes": ["tokens:create", "tokens:read", "tokens:revoke", "tokens:rotate", "audit:read", "org:admin"],
                }),
            )
            .await;
        (org_id, t)
    }

    /// Starts another server process on this app's database (a restart, after a stop).
    pub async fn restart(&self, extra: &[&str]) -> TestApp {
        spawn_process(
            &self.database_url,
            self.dir.clone(),
            self.db.clone(),
            extra,
            &[],
        )
        .await
    }

    /// The store behind the server, opened beside it, for checks the API does not expose.
    pub async fn store(&self) -> Arc<dyn latchkey::store::Store> {
        latchkey::store::connect(&self.database_url).await.unwrap()
    }
}

/// The JSON error body, asserting the status.
pub async fn error_of(res: Response, status: StatusCode) -> Value {
    let got = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "body: {body}");
    body
}

/// A well-formed token (right checksum) with the id of `token` but another kind and/or secret.
pub fn forge(
    token: &str,
    kind: Option<latchkey::token::TokenKind>,
    secret: Option<[u8; 32]>,
) -> String {
    use latchkey::token::format;
    let p = format::parse(&Default::default(), token).expect("a token of this deployment");
    format::format_token(
        &Default::default(),
        kind.unwrap_or(p.kind),
        p.id,
        &secret.unwrap_or(*p.secret.expose()),
    )
}

// PostgreSQL: a server for tests that need one, a fresh database per test, and server processes
// on a database URL of the test's choosing (several nodes on one database).

/// How to leave out the tests that need PostgreSQL, for the messages that say they cannot run.
pub const SKIP_POSTGRES: &str = "cargo test -- --skip postgres --skip multinode";

/// The admin URL of the PostgreSQL server tests create their databases on:
/// `LATCHKEY_TEST_DATABASE_URL` when set (`source .ci/postgres.sh` sets it); else a throwaway
/// cluster this test process starts on first use when PostgreSQL's server binaries are installed
/// (`/usr/lib/postgresql/*/bin`), stopped and removed when the process exits. With neither, the
/// test fails and says how to get one or how to leave these tests out: a test that did not run
/// is never reported as passed.
pub fn postgres_admin_url(test: &str) -> String {
    if let Ok(url) = std::env::var("LATCHKEY_TEST_DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    match CLUSTER.get_or_init(throwaway_cluster::start) {
        Ok(url) => url.clone(),
        Err(why) => panic!(
            "{test} needs PostgreSQL, and none could be had: LATCHKEY_TEST_DATABASE_URL is not \
             set and {why}.\n\
             Install PostgreSQL's server (Debian: `apt-get install postgresql`) and the tests \
             start a throwaway cluster of their own; or point LATCHKEY_TEST_DATABASE_URL at a \
             server (an admin URL; `source .ci/postgres.sh` starts one); or leave these tests \
             out: `{SKIP_POSTGRES}`."
        ),
    }
}

/// A PostgreSQL cluster for this test process alone, as `.ci/postgres.sh` makes one: in a temp
/// dir, on a free loopback port, durability off, run as the `postgres` user when the tests run as
/// root (PostgreSQL refuses root), stopped and removed at exit (`atexit`; a process killed by a
/// signal leaves it behind, in `$TMPDIR/latchkey-test-pg-*`).
mod throwaway_cluster {
    use super::run;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;

    struct Cluster {
        bin: PathBuf,
        dir: PathBuf,
        as_postgres: bool,
        tls: bool,
    }

    /// Every cluster started, for `stop_at_exit`.
    static STARTED: Mutex<Vec<Cluster>> = Mutex::new(Vec::new());

    /// Starts the cluster; returns its admin URL, or why it could not.
    pub fn start() -> Result<String, String> {
        start_cluster(false).map(|(url, _)| url)
    }

    /// Starts a cluster that also serves TLS (clients choose; loopback logins still need the
    /// password), with a certificate for 127.0.0.1 and `localhost` signed by a test authority.
    /// It also listens on 127.0.0.2, an address of the same host the certificate does not name.
    /// Returns its admin URL and its directory, which holds `ca.crt` (that authority) and
    /// `other-ca.crt` (one that signed nothing here).
    pub fn start_tls() -> Result<(String, PathBuf), String> {
        start_cluster(true)
    }

    fn start_cluster(tls: bool) -> Result<(String, PathBuf), String> {
        let bin = server_binaries().ok_or(
            "PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb) are not installed",
        )?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("latchkey-test-pg-")
            .tempdir()
            .map_err(|e| format!("creating a temp dir: {e}"))?
            .keep();
        let cluster = Cluster {
            bin,
            dir,
            as_postgres,
            tls,
        };
        match cluster.init_and_start() {
            Ok(url) => {
                let dir = cluster.dir.clone();
                let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
                if started.is_empty() {
                    // SAFETY: `stop_at_exit` is an `extern "C" fn()` that does not unwind.
                    unsafe { libc::atexit(stop_at_exit) };
                }
                started.push(cluster);
                Ok((url, dir))
            }
            Err(e) => {
                cluster.stop();
                Err(e)
            }
        }
    }

    /// The newest installed version's `bin` directory.
    fn server_binaries() -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    impl Cluster {
        fn init_and_start(&self) -> Result<String, String> {
            let password = uuid::Uuid::now_v7().simple().to_string();
            let pwfile = self.dir.join("password");
            std::fs::write(&pwfile, &password).map_err(|e| format!("writing {pwfile:?}: {e}"))?;
            if self.tls {
                super::test_certificates(&self.dir)?;
            }
            if self.as_postgres {
                run(Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&self.dir))?;
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("finding a free port: {e}"))?
                .port();
            let data = self.dir.join("data");
            run(self
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "latchkey", "--auth-local=peer", "--auth-host=md5"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--no-sync", "--encoding=UTF8", "--locale=C"]))?;
            let options = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c max_connections=500 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c password_encryption=md5",
                self.dir.display()
            );
            let options = if self.tls {
                format!(
                    "{options} -c ssl=on -c ssl_cert_file={dir}/server.crt \
                     -c ssl_key_file={dir}/server.key -c listen_addresses=127.0.0.1,127.0.0.2",
                    dir = self.dir.display()
                )
            } else {
                options
            };
            let log = self.dir.join("server.log");
            run(self
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options, "start"]))
            .map_err(|e| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                format!("{e}\n{log}")
            })?;
            // initdb stored the password as SCRAM-SHA-256; stored again as MD5 it makes each of
            // the tests' many logins one hash instead of sqlx's 4,096 rounds (see .ci/postgres.sh).
            run(self
                .command("psql")
                .env("PGPASSWORD", &password)
                .args(["-qtA", "-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-U", "latchkey", "-d", "postgres"])
                .arg(format!(
                    "--command=ALTER ROLE latchkey PASSWORD '{password}'"
                )))?;
            eprintln!(
                "PostgreSQL for the tests: a throwaway cluster on 127.0.0.1:{port} (data in {}), \
                 removed at exit",
                self.dir.display()
            );
            Ok(format!(
                "postgres://latchkey:{password}@127.0.0.1:{port}/postgres"
            ))
        }

        /// `bin/<program>`, run as the `postgres` user when the tests run as root.
        fn command(&self, program: &str) -> Command {
            let path = self.bin.join(program);
            let mut cmd = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            } else {
                Command::new(path)
            };
            cmd.current_dir(&self.dir).stdin(Stdio::null());
            cmd
        }

        fn stop(&self) {
            let data = self.dir.join("data");
            if data.join("postmaster.pid").exists() {
                let _ = self
                    .command("pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    extern "C" fn stop_at_exit() {
        if let Ok(started) = STARTED.try_lock() {
            for c in started.iter() {
                c.stop();
            }
        }
    }
}

/// A PostgreSQL cluster of this test process's own that serves TLS, for the tests of `sslmode`:
/// started on first use like the throwaway cluster (whatever `LATCHKEY_TEST_DATABASE_URL` says),
/// with a certificate for 127.0.0.1 signed by a test authority.
pub struct TlsCluster {
    /// An admin URL, with no `sslmode` (so sqlx's default, `prefer`).
    pub admin_url: String,
    /// The PEM file of the authority that signed the server's certificate.
    pub ca: std::path::PathBuf,
    /// The PEM file of an authority that signed nothing here.
    pub other_ca: std::path::PathBuf,
}

/// The [`TlsCluster`], or `None` (the test then returns, saying why) where PostgreSQL's server
/// binaries or `openssl` are missing. In CI, where they are installed, it fails instead.
pub fn postgres_tls_cluster(test: &str) -> Option<&'static TlsCluster> {
    static CLUSTER: OnceLock<Result<TlsCluster, String>> = OnceLock::new();
    let started = CLUSTER.get_or_init(|| {
        throwaway_cluster::start_tls().map(|(admin_url, dir)| TlsCluster {
            admin_url,
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
        })
    });
    match started {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} needs a PostgreSQL cluster with TLS, which CI must be able to start: {why}"
            );
            eprintln!("skipped {test}: no PostgreSQL cluster with TLS could be started: {why}");
            None
        }
    }
}

/// Runs `cmd`; its output becomes the error when it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A certificate authority (`ca.crt`), the server's key and certificate signed by it
/// (`server.key`, `server.crt`: 127.0.0.1 and `localhost`), and a second authority
/// (`other-ca.crt`), in `dir`, by the `openssl` command. P-256 keys: made in milliseconds.
pub fn test_certificates(dir: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| {
        run(Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null()))
    };
    let key = [
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ];
    for (name, cn) in [("ca", "Latchkey test CA"), ("other-ca", "Another test CA")] {
        let (keyout, out, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509", "-new"];
        args.extend(key);
        args.extend([
            "-keyout", &keyout, "-out", &out, "-days", "2", "-subj", &subj,
        ]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&args)?;
    }
    let mut args = vec!["req", "-new"];
    args.extend(key);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&args)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n\
         basicConstraints=critical,CA:FALSE\n",
    )
    .map_err(|e| format!("writing server.ext: {e}"))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    // PostgreSQL refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| format!("chmod server.key: {e}"))
}

/// A fresh, empty PostgreSQL database for one test. Dropped on drop, even after a failed test,
/// with `WITH (FORCE)` so connections still open (servers, pools, listeners) do not keep it.
pub struct TestDatabase {
    /// The URL of the new database, for `--database-url` or `store::connect`.
    pub url: String,
    admin_url: String,
    name: String,
    /// The login role that owns the database, dropped with it ([`Self::create_with_scram_owner`]).
    owner: Option<String>,
}

impl TestDatabase {
    pub async fn create(admin_url: &str) -> Self {
        let name = format!("lk_test_{}", Uuid::now_v7().simple());
        admin_sql(admin_url, &[format!("CREATE DATABASE {name}")]).await;
        Self {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
            owner: None,
        }
    }

    /// A fresh database owned by a new login role whose password is stored as SCRAM-SHA-256
    /// (the test clusters store their own role's as MD5, see .ci/postgres.sh). `url` logs in as
    /// that role; also returns the role and its password.
    pub async fn create_with_scram_owner(admin_url: &str) -> (Self, String, String) {
        let id = Uuid::now_v7().simple().to_string();
        let (name, role, password) = (format!("lk_test_{id}"), format!("lk_owner_{id}"), id);
        admin_sql(
            admin_url,
            &[
                "SET password_encryption = 'scram-sha-256'".to_string(),
                format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
                format!("CREATE DATABASE {name} OWNER {role}"),
            ],
        )
        .await;
        let mut url = reqwest::Url::parse(&with_database(admin_url, &name)).expect("a URL");
        url.set_username(&role).expect("a user name");
        url.set_password(Some(&password)).expect("a password");
        let db = Self {
            url: url.to_string(),
            admin_url: admin_url.to_string(),
            name,
            owner: Some(role.clone()),
        };
        (db, role, password)
    }
}

/// Runs `statements` in order on one connection to the cluster at `admin_url`.
async fn admin_sql(admin_url: &str, statements: &[String]) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connecting to LATCHKEY_TEST_DATABASE_URL");
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let _ = admin.close().await;
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        // One statement at a time: several in one message would share a transaction, which
        // DROP DATABASE refuses.
        let mut statements = vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )];
        if let Some(owner) = &self.owner {
            statements.push(format!("DROP ROLE IF EXISTS {owner}"));
        }
        // Drop may run inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    for sql in statements {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut admin)
                            .await;
                    }
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// `url` with its database (the path) replaced by `database`; the query string is kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Starts the real binary on the database at `url` with extra `serve` flags: one node of several
/// sharing a database. Only the first node on an empty database prints a bootstrap token; on the
/// others `admin_token` is empty and `org_id` nil (copy them from the first node).
pub async fn spawn_node(url: &str, extra: &[&str]) -> TestApp {
    spawn_node_with_env(url, extra, &[]).await
}

/// Runs `latchkey serve` on the database at `url`, with `extra` flags, until it exits: for the
/// tests of a node that must refuse to start. One that wrongly started would serve forever, so
/// `timeout` ends it after a minute (status 124).
pub async fn serve_until_it_exits(url: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
        .args(extra);
    tokio::task::spawn_blocking(move || cmd.output().expect("run latchkey serve"))
        .await
        .expect("the serve thread")
}

/// [`spawn_node`] with environment variables.
pub async fn spawn_node_with_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    spawn_process(url, dir, None, extra, env).await
}
