//! `latchkey token ...`, `latchkey audit ...`, `latchkey user list|get|me|disable|enable` and
//! `latchkey login`: a client of the REST API. Readable tables by default, `--json` for
//! scripts; a failure prints the server's error and exits non-zero.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cli::{AuditCommand, ClientArgs, LoginArgs, TokenCommand, UserRemoteCommand};
use crate::token::Secret;

/// The `User-Agent` of every request the CLI sends.
const USER_AGENT: &str = concat!("latchkey-cli/", env!("CARGO_PKG_VERSION"));

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

/// What to do about a server certificate rustls refused, from its error's text.
fn certificate_hint(error: &str) -> Option<&'static str> {
    // rustls prints some reasons by name (`UnknownIssuer`, `Expired`), others as sentences.
    let error = error.to_ascii_lowercase();
    if !error.contains("invalid peer certificate") {
        None
    } else if error.contains("unknownissuer") {
        Some("its certificate is not trusted (name its authority with --ca-cert)")
    } else if error.contains("not valid for name") || error.contains("notvalidforname") {
        Some("its certificate is for another name (use one in --url that it holds)")
    } else if error.contains("expired") {
        Some("its certificate has expired")
    } else {
        Some("its certificate was refused")
    }
}

/// A server's answer: status, headers and JSON body (`Null` when it was not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Self::to(&args.url, args.ca_cert.as_deref(), args.token.clone())
    }

    /// A client of the server at `url` (`http://` or `https://`). An `https://` server's
    /// certificate must chain to a system authority (`SSL_CERT_FILE` and `SSL_CERT_DIR` name
    /// others) or to one in the PEM file `ca_cert`: the TLS of `latchkey_client`.
    fn to(url: &str, ca_cert: Option<&Path>, token: Option<String>) -> anyhow::Result<Self> {
        let url = url.trim_end_matches('/');
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            bail!("the server URL must start with http:// or https:// (got {url:?})");
        }
        let pem = match ca_cert.filter(|_| https) {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --ca-cert {}", path.display()))?,
            ),
            None => None,
        };
        let tls =
            latchkey_client::tls_config(url, pem.as_deref()).with_context(|| match ca_cert {
                Some(path) if https => format!("--ca-cert {}", path.display()),
                _ => "TLS".to_string(),
            })?;
        // No redirects: the API sends none, and one from https:// to http:// would resend a
        // password or a token in the clear.
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(tls)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            url: url.to_string(),
            token,
        })
    }

    /// Sends a request (with the bearer token, if any) and returns whatever the server answered.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let mut rb = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb.send().await.map_err(|e| {
            let e = anyhow::Error::new(e);
            let e = match certificate_hint(&crate::error::one_line(&e)) {
                Some(hint) => e.context(hint),
                None => e,
            };
            e.context(format!("cannot reach the Latchkey server at {}", self.url))
        })?;
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.context("reading the server's answer")?;
        Ok(Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        })
    }

    /// Sends a request; returns the JSON body of a success, or fails with the server's message
    /// (for a rate limit: which one, when to retry and the server flag that sets it).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let limit = Limit::of(&method, path);
        let a = self.send(method, path, body).await?;
        if a.status.is_success() {
            Ok(a.body)
        } else {
            Err(failure(&a, limit))
        }
    }

    fn require_token(&self) -> anyhow::Result<()> {
        if self.token.is_none() {
            bail!("this command needs a token: pass --token or set LATCHKEY_TOKEN");
        }
        Ok(())
    }
}

/// The error for a failed answer: for 429, the rate limit `limit` met and when to retry; else
/// the server's message and code, or the status.
fn failure(a: &Answer, limit: Limit) -> anyhow::Error {
    let (status, v) = (a.status, &a.body);
    if status == StatusCode::TOO_MANY_REQUESTS {
        return anyhow::anyhow!(limit.message(retry_after(&a.headers)));
    }
    match (v["error"]["code"].as_str(), v["error"]["message"].as_str()) {
        (Some(code), Some(msg)) => anyhow::anyhow!("{msg} ({code}, HTTP {})", status.as_u16()),
        _ if status == StatusCode::UNAUTHORIZED => {
            anyhow::anyhow!("unauthenticated: set --token or LATCHKEY_TOKEN")
        }
        _ if status.is_redirection() => match a.headers.get(LOCATION).map(|l| l.to_str()) {
            Some(Ok(to)) => anyhow::anyhow!(
                "the server answered HTTP {} to {to} (redirects are not followed: give --url as \
                 the server's own address)",
                status.as_u16()
            ),
            _ => anyhow::anyhow!("the server answered HTTP {}", status.as_u16()),
        },
        _ => anyhow::anyhow!("the server answered HTTP {}", status.as_u16()),
    }
}

/// The seconds of a `Retry-After` header, when it holds a number.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The server's rate limit a refused request met. The error body says only `rate_limited`, so
/// the request tells which: what it did, and how long the wait is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// `POST /v1/tokens` or a rotation: tokens minted per calling token per hour.
    Mint,
    /// `POST /v1/auth/token`: sign-ins per client address per 15 minutes.
    Login,
    /// `POST /v1/tokens/verify`: failed verifications per client address per minute.
    FailedVerify,
    /// Anything else: management requests per client address per second.
    Management,
}

impl Limit {
    fn of(method: &Method, path: &str) -> Self {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/v1/auth/token" => Limit::Login,
            "/v1/tokens/verify" => Limit::FailedVerify,
            "/v1/tokens" if *method == Method::POST => Limit::Mint,
            p if *method == Method::POST
                && p.starts_with("/v1/tokens/")
                && p.ends_with("/rotate") =>
            {
                Limit::Mint
            }
            _ => Limit::Management,
        }
    }

    /// One line: the limit in words, when to retry, and the `latchkey serve` flag that raises it.
    fn message(self, retry_after: Option<u64>) -> String {
        let wait = retry_after.map_or_else(|| "a while".to_string(), wait_words);
        // A mint refused for a second or less is more likely the per-second management limit
        // (the mint limit's default frees one mint every 3.6 seconds).
        let limit = match self {
            Limit::Mint if retry_after.is_some_and(|s| s <= 1) => Limit::Management,
            other => other,
        };
        let (what, flags) = match limit {
            Limit::Mint => (
                "this token has minted too many tokens (the server's limit on tokens created or \
                 rotated per calling token per hour)",
                "`latchkey serve --rate-limit-mint-per-token-per-hour`",
            ),
            Limit::Login => (
                "too many sign-ins from this address (the server's limit on sign-ins per client \
                 address per 15 minutes; tokens minted with a password also count against its \
                 limit per client address per hour)",
                "`latchkey serve --rate-limit-login-per-15m` (and `--rate-limit-mint-per-hour`)",
            ),
            Limit::FailedVerify => (
                "too many failed verifications from this address or of this token (the \
                 server's limit on failed Argon2id checks per client address and per token per \
                 minute)",
                "`latchkey serve --rate-limit-failed-verify-per-minute`",
            ),
            Limit::Management => (
                "too many requests from this address (the server's limit on management requests \
                 per client address per second, or, after wrong Argon2id secrets, on failed \
                 checks per minute)",
                "`latchkey serve --rate-limit-per-second` and `--rate-limit-burst`, or \
                 `--rate-limit-failed-verify-per-minute`",
            ),
        };
        format!("rate limited: {what}; try again in {wait}, or raise the limit with {flags}")
    }
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// "in 3h", "2d ago", "never".
pub fn relative(t: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(t) = t.and_then(|s| s.parse::<DateTime<Utc>>().ok()) else {
        return "never".into();
    };
    let secs = (t - now).num_seconds();
    let a = secs.unsigned_abs();
    let span = match a {
        0..60 => format!("{a}s"),
        60..3600 => format!("{}m", (a + 30) / 60),
        3600..86_400 => format!("{}h", (a + 1800) / 3600),
        _ => format!("{}d", (a + 43_200) / 86_400),
    };
    if secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// When a token expires, in words ("in 3h", "2h ago", "never"); `-` for a revoked token, which
/// no longer works whatever its expiry says.
fn expiry(t: &Value, now: DateTime<Utc>) -> String {
    if t["state"] == "revoked" {
        return "-".into();
    }
    relative(t["expires_at"].as_str(), now)
}

fn token_rows(tokens: &[Value], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                s(&t["id"]),
                s(&t["name"]),
                s(&t["type"]),
                s(&t["state"]),
                t["scopes"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                expiry(t, now),
                relative(t["last_used_at"].as_str(), now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "TYPE",
            "STATE",
            "SCOPES",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    )
}

fn token_detail(t: &Value, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    for key in [
        "id",
        "name",
        "type",
        "state",
        "org_id",
        "display_hint",
        "scopes",
        "created_by",
        "created_at",
        "replaced_by",
        "request_count",
    ] {
        out.push_str(&format!("{key:<14}{}\n", s(&t[key])));
    }
    out.push_str(&format!("{:<14}{}\n", "expires", expiry(t, now)));
    out.push_str(&format!(
        "{:<14}{}\n",
        "last used",
        relative(t["last_used_at"].as_str(), now)
    ));
    if let Some(ips) = t["client_ips"].as_array().filter(|a| !a.is_empty()) {
        let list: Vec<String> = ips.iter().map(|i| s(&i["ip"])).collect();
        out.push_str(&format!("{:<14}{}\n", "client ips", list.join(", ")));
    }
    out
}

/// Writes `out` on stdout, each line without trailing spaces (an empty last column leaves none).
fn print(out: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for line in out.split_inclusive('\n') {
        let (text, end) = match line.strip_suffix('\n') {
            Some(text) => (text, "\n"),
            None => (line, ""),
        };
        stdout.write_all(text.trim_end().as_bytes())?;
        stdout.write_all(end.as_bytes())?;
    }
    Ok(())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Runs `latchkey token ...`.
///
/// # Errors
/// Transport failures and every error the server answers, with its message.
pub async fn token(args: &ClientArgs, cmd: TokenCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let now = Utc::now();
    match cmd {
        TokenCommand::Create {
            name,
            r#type,
            scopes,
            permissions,
            ttl_seconds,
            expires_at,
            org_id,
            metadata,
        } => {
            c.require_token()?;
            let metadata: Option<Value> = metadata
                .map(|m| serde_json::from_str(&m).context("--metadata must be a JSON object"))
                .transpose()?;
            let mut body = json!({ "name": name, "type": r#type });
            for (k, v) in [
                ("scopes", (!scopes.is_empty()).then(|| json!(scopes))),
                ("permissions", permissions.map(|p| json!(p))),
                ("ttl_seconds", ttl_seconds.map(|t| json!(t))),
                ("expires_at", expires_at.map(|t| json!(t))),
                ("org_id", org_id.map(|o| json!(o))),
                ("metadata", metadata),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let v = c.call(Method::POST, "/v1/tokens", Some(body)).await?;
            if args.json {
                return print_json(&v);
            }
            eprintln!(
                "created {} ({}). The token follows on stdout; it will not be shown again.",
                s(&v["token"]["id"]),
                s(&v["token"]["name"])
            );
            print(&format!("{}\n", s(&v["plaintext"])))
        }
        TokenCommand::List {
            org_id,
            state,
            format,
            page_size,
            page_token,
        } => {
            c.require_token()?;
            let q = query(&[
                ("org_id", org_id),
                ("state", state),
                ("format", format),
                ("page_size", page_size.map(|p| p.to_string())),
                ("page_token", page_token),
            ]);
            let v = c.call(Method::GET, &format!("/v1/tokens{q}"), None).await?;
            if args.json {
                return print_json(&v);
            }
            let tokens = v["tokens"].as_array().cloned().unwrap_or_default();
            print(&token_rows(&tokens, now))?;
            if let Some(next) = v["next_page_token"].as_str() {
                eprintln!("more: --page-token {next}");
            }
            Ok(())
        }
        TokenCommand::Get { id, org_id } => {
            c.require_token()?;
            let q = query(&[("org_id", org_id)]);
            let v = c
                .call(Method::GET, &format!("/v1/tokens/{}{q}", encode(&id)), None)
                .await?;
            if args.json {
                print_json(&v)
            } else {
                print(&token_detail(&v, now))
            }
        }
        TokenCommand::Revoke { id, org_id } if id == "-" => {
            c.require_token()?;
            let q = query(&[("org_id", org_id)]);
            // Every id is tried; any failure makes the exit status 1, after the rest.
            let (mut tried, mut failed) = (0, 0);
            for line in std::io::stdin().lines() {
                let line = line.context("reading token ids from stdin")?;
                let id = line.trim();
                if id.is_empty() {
                    continue;
                }
                tried += 1;
                let path = format!("/v1/tokens/{}{q}", encode(id));
                match c.call(Method::DELETE, &path, None).await {
                    Ok(v) if args.json => print_json(&v)?,
                    Ok(v) => print(&format!("revoked {}\n", s(&v["id"])))?,
                    Err(e) => {
                        eprintln!("error: {id}: {}", crate::error::one_line(&e));
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {tried} tokens could not be revoked (named above)");
            }
            Ok(())
        }
        TokenCommand::Revoke { id, org_id } => {
            c.require_token()?;
            let q = query(&[("org_id", org_id)]);
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/tokens/{}{q}", encode(&id)),
                    None,
                )
                .await?;
            if args.json {
                print_json(&v)
            } else {
                print(&format!("revoked {}\n", s(&v["id"])))
            }
        }
        TokenCommand::Rotate {
            id,
            grace_seconds,
            org_id,
        } => {
            c.require_token()?;
            let mut body = json!({});
            if let Some(g) = grace_seconds {
                body["grace_seconds"] = json!(g);
            }
            if let Some(o) = org_id {
                body["org_id"] = json!(o);
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/tokens/{}/rotate", encode(&id)),
                    Some(body),
                )
                .await?;
            if args.json {
                return print_json(&v);
            }
            eprintln!(
                "rotated {} -> {}; the old token stops working {}. The new token follows on \
                 stdout; it will not be shown again.",
                s(&v["previous"]["id"]),
                s(&v["token"]["id"]),
                relative(v["previous"]["expires_at"].as_str(), now)
            );
            print(&format!("{}\n", s(&v["plaintext"])))
        }
        TokenCommand::Disable { id, org_id } => switch(&c, args, &id, org_id, "disable").await,
        TokenCommand::Enable { id, org_id } => switch(&c, args, &id, org_id, "enable").await,
        TokenCommand::Verify { token, require } => {
            let token = if token == "-" {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim().to_string()
            } else {
                token
            };
            let a = c
                .send(
                    Method::POST,
                    "/v1/tokens/verify",
                    Some(json!({ "token": token, "required_scopes": require })),
                )
                .await?;
            if !a.status.is_success() {
                return Err(failure(&a, Limit::FailedVerify));
            }
            let v = a.body;
            if args.json {
                print_json(&v)?;
            } else {
                print(&verdict_line(&v))?;
            }
            if v["valid"] == true {
                Ok(())
            } else if v["code"] == "RATE_LIMITED" {
                // Refused unchecked: say which limit, and when to retry.
                Err(anyhow::anyhow!(
                    Limit::FailedVerify.message(retry_after(&a.headers))
                ))
            } else {
                // Scripts can test the exit code.
                std::process::exit(1)
            }
        }
    }
}

/// `VALID <id> <scopes>`, or the code alone for a token that did not verify: the fields
/// separated by one space, none empty.
fn verdict_line(v: &Value) -> String {
    let scopes = v["scopes"]
        .as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let fields = [s(&v["code"]), s(&v["token_id"]), scopes];
    let fields: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !f.is_empty() && *f != "-")
        .collect();
    format!("{}\n", fields.join(" "))
}

async fn switch(
    c: &Client,
    args: &ClientArgs,
    id: &str,
    org_id: Option<String>,
    action: &str,
) -> anyhow::Result<()> {
    c.require_token()?;
    let q = query(&[("org_id", org_id)]);
    let v = c
        .call(
            Method::POST,
            &format!("/v1/tokens/{}/{action}{q}", encode(id)),
            None,
        )
        .await?;
    if args.json {
        print_json(&v)
    } else {
        print(&format!("{} is {}\n", s(&v["id"]), s(&v["state"])))
    }
}

/// Runs `latchkey audit ...`.
///
/// # Errors
/// Transport failures and every error the server answers, with its message.
pub async fn audit(args: &ClientArgs, cmd: AuditCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    c.require_token()?;
    let AuditCommand::List {
        org_id,
        token_id,
        action,
        actor,
        since,
        until,
        page_size,
        page_token,
        ids,
    } = cmd;
    let page = |page_token: Option<String>| {
        query(&[
            ("org_id", org_id.clone()),
            ("token_id", token_id.clone()),
            ("action", action.clone()),
            ("actor", actor.clone()),
            ("since", since.clone()),
            ("until", until.clone()),
            ("page_size", page_size.map(|p| p.to_string())),
            ("page_token", page_token),
        ])
    };
    if ids {
        // Every page, each token once, in the order first seen (newest event first).
        let mut seen = std::collections::HashSet::new();
        let mut out = String::new();
        let mut next = page_token;
        loop {
            let v = c
                .call(Method::GET, &format!("/v1/audit{}", page(next)), None)
                .await?;
            for e in v["events"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(id) = e["token_id"].as_str()
                    && seen.insert(id.to_string())
                {
                    out.push_str(id);
                    out.push('\n');
                }
            }
            match v["next_page_token"].as_str() {
                Some(n) => next = Some(n.to_string()),
                None => break,
            }
        }
        return print(&out);
    }
    let v = c
        .call(Method::GET, &format!("/v1/audit{}", page(page_token)), None)
        .await?;
    if args.json {
        return print_json(&v);
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = v["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                relative(e["occurred_at"].as_str(), now),
                s(&e["action"]),
                s(&e["actor"]),
                s(&e["token_id"]),
                s(&e["ip"]),
            ]
        })
        .collect();
    print(&table(&["WHEN", "ACTION", "ACTOR", "TOKEN", "IP"], &rows))?;
    if let Some(next) = v["next_page_token"].as_str() {
        eprintln!("more: --page-token {next}");
    }
    Ok(())
}

fn user_rows(users: &[Value], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                s(&u["id"]),
                s(&u["email"]),
                s(&u["name"]),
                role_of(u),
                s(&u["state"]),
                relative(u["last_login_at"].as_str(), now),
            ]
        })
        .collect();
    table(
        &["ID", "EMAIL", "NAME", "ROLE", "STATE", "LAST LOGIN"],
        &rows,
    )
}

/// `member`, `admin`, or either with `+platform` for an operator of the whole deployment.
fn role_of(u: &Value) -> String {
    if u["platform_admin"] == true {
        format!("{}+platform", s(&u["role"]))
    } else {
        s(&u["role"])
    }
}

fn user_detail(u: &Value, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    for key in ["id", "email", "name"] {
        out.push_str(&format!("{key:<14}{}\n", s(&u[key])));
    }
    out.push_str(&format!("{:<14}{}\n", "role", role_of(u)));
    for key in ["state", "org_id"] {
        out.push_str(&format!("{key:<14}{}\n", s(&u[key])));
    }
    let scopes = u["scopes"]
        .as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    out.push_str(&format!("{:<14}{scopes}\n", "scopes"));
    for key in ["created_by", "created_at"] {
        out.push_str(&format!("{key:<14}{}\n", s(&u[key])));
    }
    out.push_str(&format!(
        "{:<14}{}\n",
        "last login",
        relative(u["last_login_at"].as_str(), now)
    ));
    if !u["disabled_at"].is_null() {
        out.push_str(&format!("{:<14}{}\n", "disabled_at", s(&u["disabled_at"])));
    }
    out
}

/// Runs `latchkey user list|get|me|disable|enable`.
///
/// # Errors
/// Transport failures and every error the server answers, with its message.
pub async fn user(cmd: UserRemoteCommand) -> anyhow::Result<()> {
    let now = Utc::now();
    let (args, path, method) = match &cmd {
        UserRemoteCommand::List {
            client,
            org_id,
            page_size,
            page_token,
        } => {
            let q = query(&[
                ("org_id", org_id.clone()),
                ("page_size", page_size.map(|p| p.to_string())),
                ("page_token", page_token.clone()),
            ]);
            (client, format!("/v1/users{q}"), Method::GET)
        }
        UserRemoteCommand::Get { client, id } => {
            (client, format!("/v1/users/{}", encode(id)), Method::GET)
        }
        UserRemoteCommand::Me { client } => (client, "/v1/users/me".to_string(), Method::GET),
        UserRemoteCommand::Disable { client, id } => (
            client,
            format!("/v1/users/{}/disable", encode(id)),
            Method::POST,
        ),
        UserRemoteCommand::Enable { client, id } => (
            client,
            format!("/v1/users/{}/enable", encode(id)),
            Method::POST,
        ),
    };
    let c = Client::new(args)?;
    c.require_token()?;
    let v = c.call(method, &path, None).await?;
    if args.json {
        return print_json(&v);
    }
    match cmd {
        UserRemoteCommand::List { .. } => {
            let users = v["users"].as_array().cloned().unwrap_or_default();
            print(&user_rows(&users, now))?;
            if let Some(next) = v["next_page_token"].as_str() {
                eprintln!("more: --page-token {next}");
            }
            Ok(())
        }
        UserRemoteCommand::Get { .. } | UserRemoteCommand::Me { .. } => {
            print(&user_detail(&v, now))
        }
        UserRemoteCommand::Disable { .. } => print(&format!(
            "{} ({}) is {}: its tokens are revoked and its sessions ended\n",
            s(&v["email"]),
            s(&v["id"]),
            s(&v["state"])
        )),
        UserRemoteCommand::Enable { .. } => print(&format!(
            "{} ({}) is {}\n",
            s(&v["email"]),
            s(&v["id"]),
            s(&v["state"])
        )),
    }
}

/// Runs `latchkey login`: trades an email and password for a token and prints its plaintext
/// alone on stdout (or the server's JSON with `--json`).
///
/// # Errors
/// Wrong credentials ("invalid email or password"), the sign-in rate limit (with the time to
/// wait), transport failures and every other error the server answers.
pub async fn login(args: &LoginArgs) -> anyhow::Result<()> {
    // `--password-stdin` and a stdin that is not a terminal both read the line from stdin;
    // a terminal is asked without echo.
    let password = read_password(&format!("Password for {}: ", args.email))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_token_name(hostname().as_deref(), Utc::now()));
    let mut body = json!({ "email": args.email, "password": password.expose(), "name": name });
    if !args.scopes.is_empty() {
        body["scopes"] = json!(args.scopes);
    }
    if let Some(d) = args.expires_in_days {
        body["expires_in_days"] = json!(d);
    }
    let c = Client::to(&args.url, args.ca_cert.as_deref(), None)?;
    let a = c.send(Method::POST, "/v1/auth/token", Some(body)).await?;
    match a.status {
        s if s.is_success() => {}
        StatusCode::UNAUTHORIZED => bail!("invalid email or password"),
        _ => return Err(failure(&a, Limit::Login)),
    }
    if args.json {
        return print_json(&a.body);
    }
    eprintln!(
        "signed in as {}; token {} ({}) expires {}. It follows on stdout and will not be shown \
         again.",
        args.email,
        s(&a.body["token"]["id"]),
        s(&a.body["token"]["name"]),
        relative(a.body["token"]["expires_at"].as_str(), Utc::now())
    );
    print(&format!("{}\n", s(&a.body["plaintext"])))
}

/// "45 seconds", "15 minutes" (rounded up).
fn wait_words(secs: u64) -> String {
    match secs {
        1 => "1 second".into(),
        0..60 => format!("{secs} seconds"),
        _ => match secs.div_ceil(60) {
            1 => "1 minute".into(),
            m => format!("{m} minutes"),
        },
    }
}

/// The name of a token minted by `latchkey login` without `--name`: `cli <host> <UTC time>`,
/// with the host cut to the characters a name may hold (`login` when there is none).
pub fn default_token_name(host: Option<&str>, now: DateTime<Utc>) -> String {
    let host: String = host
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        .take(64)
        .collect();
    let host = if host.is_empty() { "login" } else { &host };
    format!("cli {host} {}", now.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

#[cfg(unix)]
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

#[cfg(not(unix))]
fn hostname() -> Option<String> {
    std::env::var("COMPUTERNAME").ok()
}

/// Reads a password: from the terminal without echo (after `prompt`, written to the terminal)
/// when stdin is one, else one line of stdin without its line ending (nothing else is trimmed:
/// spaces are part of a password).
///
/// # Errors
/// Stdin is empty or cannot be read.
pub fn read_password(prompt: &str) -> anyhow::Result<Secret<String>> {
    if std::io::stdin().is_terminal() {
        let pw = rpassword::prompt_password(prompt).context("reading the password")?;
        return Ok(Secret::new(pw));
    }
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    if n == 0 {
        bail!("no password on stdin: give it as one line");
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(Secret::new(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_gets_the_hint_of_its_reason_and_other_errors_none() {
        // The texts rustls 0.23 gives (the first two seen in tests/api/tls_front.rs).
        let refused = "client error (Connect): invalid peer certificate:";
        for (error, hint) in [
            (format!("{refused} UnknownIssuer"), Some("not trusted")),
            (
                format!("{refused} certificate not valid for name \"127.0.0.2\"; ..."),
                Some("for another name"),
            ),
            (
                format!("{refused} certificate expired: verification time 1 (UNIX), ..."),
                Some("has expired"),
            ),
            (format!("{refused} Expired"), Some("has expired")),
            (
                format!("{refused} NotValidForName"),
                Some("for another name"),
            ),
            (format!("{refused} BadSignature"), Some("was refused")),
            ("tcp connect error: Connection refused".to_string(), None),
        ] {
            let got = certificate_hint(&error);
            match hint {
                Some(h) => assert!(got.is_some_and(|g| g.contains(h)), "{error}: {got:?}"),
                None => assert_eq!(got, None, "{error}"),
            }
        }
    }

    #[test]
    fn relative_times_read_naturally() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(relative(None, now), "never");
        assert_eq!(relative(Some("2026-01-01T03:00:00Z"), now), "in 3h");
        assert_eq!(relative(Some("2025-12-30T00:00:00Z"), now), "2d ago");
        assert_eq!(relative(Some("2026-01-01T00:00:30Z"), now), "in 30s");
    }

    #[test]
    fn a_login_token_is_named_after_the_host_and_the_time() {
        let now: DateTime<Utc> = "2026-01-02T03:04:05.678Z".parse().unwrap();
        assert_eq!(
            default_token_name(Some("build-7.example"), now),
            "cli build-7.example 2026-01-02T03:04:05.678Z"
        );
        assert_eq!(
            default_token_name(Some("h\u{e9}te/x"), now),
            "cli htex 2026-01-02T03:04:05.678Z"
        );
        assert_eq!(
            default_token_name(None, now),
            "cli login 2026-01-02T03:04:05.678Z"
        );
    }

    #[test]
    fn waits_read_naturally() {
        assert_eq!(wait_words(1), "1 second");
        assert_eq!(wait_words(45), "45 seconds");
        assert_eq!(wait_words(60), "1 minute");
        assert_eq!(wait_words(601), "11 minutes");
    }

    #[test]
    fn a_refusal_is_put_down_to_the_limit_of_the_request_it_answered() {
        assert_eq!(Limit::of(&Method::POST, "/v1/tokens"), Limit::Mint);
        assert_eq!(
            Limit::of(&Method::POST, "/v1/tokens/abc/rotate"),
            Limit::Mint
        );
        assert_eq!(Limit::of(&Method::POST, "/v1/auth/token"), Limit::Login);
        assert_eq!(
            Limit::of(&Method::POST, "/v1/tokens/verify"),
            Limit::FailedVerify
        );
        assert_eq!(
            Limit::of(&Method::GET, "/v1/tokens?state=active"),
            Limit::Management
        );
        assert_eq!(
            Limit::of(&Method::POST, "/v1/tokens/abc/disable"),
            Limit::Management
        );
        let mint = Limit::Mint.message(Some(3000));
        assert!(mint.contains("try again in 50 minutes"), "{mint}");
        assert!(
            mint.contains("--rate-limit-mint-per-token-per-hour"),
            "{mint}"
        );
        // A one-second wait is the per-second management limit, not the hourly mint limit.
        let quick = Limit::Mint.message(Some(1));
        assert!(quick.contains("--rate-limit-per-second"), "{quick}");
        assert!(Limit::Login.message(None).contains("try again in a while"));
    }

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(
            query(&[("actor", Some("token:a b".into())), ("x", None)]),
            "?actor=token%3Aa%20b"
        );
        assert_eq!(query(&[("x", None)]), "");
    }
}
