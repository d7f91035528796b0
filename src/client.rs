//! `latchkey token ...` and `latchkey audit ...`: a client of the REST API. Readable tables by
//! default, `--json` for scripts; a failure prints the server's error and exits non-zero.

use std::io::Write;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cli::{AuditCommand, ClientArgs, TokenCommand};

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: args.url.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        }
    }

    /// Sends a request; returns the JSON body of a success, or fails with the server's message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut rb = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb
            .send()
            .await
            .with_context(|| format!("cannot reach the Latchkey server at {}", self.url))?;
        let status = res.status();
        let text = res.text().await.context("reading the server's answer")?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        match (v["error"]["code"].as_str(), v["error"]["message"].as_str()) {
            (Some(code), Some(msg)) => bail!("{msg} ({code}, HTTP {})", status.as_u16()),
            _ if status == StatusCode::UNAUTHORIZED => {
                bail!("unauthenticated: set --token or LATCHKEY_TOKEN")
            }
            _ => bail!("the server answered HTTP {}", status.as_u16()),
        }
    }

    fn require_token(&self) -> anyhow::Result<()> {
        if self.token.is_none() {
            bail!("this command needs a token: pass --token or set LATCHKEY_TOKEN");
        }
        Ok(())
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
                relative(t["expires_at"].as_str(), now),
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
    out.push_str(&format!(
        "{:<14}{}\n",
        "expires",
        relative(t["expires_at"].as_str(), now)
    ));
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

fn print(out: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
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
    let c = Client::new(args);
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
            page_size,
            page_token,
        } => {
            c.require_token()?;
            let q = query(&[
                ("org_id", org_id),
                ("state", state),
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
            let v = c
                .call(
                    Method::POST,
                    "/v1/tokens/verify",
                    Some(json!({ "token": token, "required_scopes": require })),
                )
                .await?;
            if args.json {
                print_json(&v)?;
            } else {
                print(&format!(
                    "{} {} {}\n",
                    s(&v["code"]),
                    v["token_id"].as_str().unwrap_or(""),
                    v["scopes"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_default()
                ))?;
            }
            if v["valid"] == true {
                Ok(())
            } else {
                // Scripts can test the exit code.
                std::process::exit(1)
            }
        }
    }
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
    let c = Client::new(args);
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
    } = cmd;
    let q = query(&[
        ("org_id", org_id),
        ("token_id", token_id),
        ("action", action),
        ("actor", actor),
        ("since", since),
        ("until", until),
        ("page_size", page_size.map(|p| p.to_string())),
        ("page_token", page_token),
    ]);
    let v = c.call(Method::GET, &format!("/v1/audit{q}"), None).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(relative(None, now), "never");
        assert_eq!(relative(Some("2026-01-01T03:00:00Z"), now), "in 3h");
        assert_eq!(relative(Some("2025-12-30T00:00:00Z"), now), "2d ago");
        assert_eq!(relative(Some("2026-01-01T00:00:30Z"), now), "in 30s");
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
