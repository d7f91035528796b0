//! What the route annotations cannot say by themselves, added to the document once at start:
//! the answers every route shares because of where they come from (the accept loop's in-flight
//! cap and request timeout, the authentication extractor, the body extractor), and what depends on
//! the deployment (its scope names and permission bits). The result is exactly what the server
//! answers: `.ci/schemathesis.sh` holds it to that.

use serde_json::{Map, Value, json};

use crate::token::{Permissions, ScopeRegistry};

/// Routes answered on their first poll (no I/O), which the request timer never reaches.
const ANSWERED_AT_ONCE: [&str; 3] = ["/healthz", "/metrics", "/v1/openapi.json"];

/// Adds the shared answers and this deployment's scopes to `doc` (the JSON of the annotations).
pub(super) fn complete(doc: &mut Value, scopes: &ScopeRegistry) {
    shared_answers(doc);
    one_lifetime_at_most(doc);
    deployment_scopes(doc, scopes);
}

/// A body may give one of two ways to say a lifetime, not both (`null` counts as absent). The
/// derive has no attribute for `not`, so it is added here.
fn one_lifetime_at_most(doc: &mut Value) {
    for (body, a, b) in [
        ("CreateTokenRequest", "expires_at", "ttl_seconds"),
        ("ExchangePasswordRequest", "ttl_seconds", "expires_in_days"),
    ] {
        let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{body}")) else {
            continue;
        };
        let kind = |field: &str| {
            let types = &schema["properties"][field]["type"];
            let first = types.as_array().and_then(|t| t.first()).unwrap_or(types);
            first.clone()
        };
        let not_both = json!({
            "required": [a, b],
            "properties": {a: {"type": kind(a)}, b: {"type": kind(b)}},
        });
        schema["not"] = not_both;
    }
}

fn error_body(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

fn retry_after(required: bool) -> Value {
    json!({"Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": required,
        "schema": {"type": "integer", "minimum": 1},
    }})
}

/// Every status a route can answer that comes from outside its handler.
fn shared_answers(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let secured = op.contains_key("security");
            let has_body = op.contains_key("requestBody");
            if secured {
                // The extractor takes a bearer or a session cookie on every secured route.
                op.insert("security".into(), json!([{"bearer": []}, {"session": []}]));
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, response: Value| {
                responses.entry(status.to_string()).or_insert(response);
            };
            if has_body {
                add(
                    "400",
                    error_body("Malformed body: not a JSON object, or a field breaks its rule"),
                );
                add(
                    "413",
                    error_body("Body larger than the server's limit (--max-body-bytes)"),
                );
            }
            if secured {
                add("401", error_body("Missing or invalid credential"));
                add(
                    "403",
                    error_body(
                        "Lacks a permission, or a session request without its X-CSRF-Token or from another site",
                    ),
                );
            }
            if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                add(
                    "500",
                    error_body("Internal error (logged; the message says no more)"),
                );
            }
            if !ANSWERED_AT_ONCE.contains(&path.as_str()) {
                add(
                    "408",
                    error_body(
                        "Not answered within the request timeout (--request-timeout-seconds)",
                    ),
                );
            }
            // A refusal of the management limit (every secured route) carries Retry-After; the
            // routes with limits of their own list 429 in their annotations.
            if secured {
                let mut limited = error_body(
                    "Too many requests from this client address (--rate-limit-per-second), or past a mint or sign-in limit",
                );
                limited["headers"] = retry_after(true);
                add("429", limited);
            }
            if let Some(r) = responses.get_mut("429") {
                r.as_object_mut()
                    .map(|r| r.entry("headers").or_insert_with(|| retry_after(true)));
            }
            let mut overloaded = error_body(
                "Too many requests in flight (--max-in-flight); retry after Retry-After (1 second)",
            );
            overloaded["headers"] = retry_after(false);
            match responses.get_mut("503") {
                // `/readyz` answers 503 itself, with a body of its own.
                Some(r) => {
                    r["description"] = json!(format!(
                        "{}; or too many requests in flight (--max-in-flight), with Retry-After",
                        r["description"].as_str().unwrap_or_default()
                    ));
                    r["headers"] = retry_after(false);
                }
                None => {
                    responses.insert("503".into(), overloaded);
                }
            }
            sort_statuses(responses);
        }
    }
}

/// Responses in status order, so the document reads (and diffs) well.
fn sort_statuses(responses: &mut Map<String, Value>) {
    let mut all: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    responses.extend(all);
}

/// The scope names a request may give and the largest permission bitmap it may ask for, as this
/// deployment defines them.
fn deployment_scopes(doc: &mut Value, scopes: &ScopeRegistry) {
    let assigned = Permissions::ALL_SYSTEM.union(scopes.custom());
    let names = scopes.names(assigned);
    // The bitmap may hold only assigned bits; that is `maximum` exactly when they are the low
    // bits (always, unless the config leaves gaps between its custom bits).
    let bits = assigned.bits();
    let contiguous = bits.checked_add(1).is_none_or(u64::is_power_of_two);
    let maximum = if contiguous {
        bits
    } else {
        u64::MAX >> bits.leading_zeros()
    };
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for name in ["CreateTokenRequest", "ExchangePasswordRequest"] {
        let Some(props) = schemas
            .get_mut(name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(items) = props.get_mut("scopes").and_then(|s| s.get_mut("items")) {
            items["enum"] = json!(names);
        }
        if let Some(p) = props.get_mut("permissions") {
            p["maximum"] = json!(maximum);
            if !contiguous {
                p["description"] = json!(format!(
                    "The permission bitmap: only the bits of this deployment's scopes ({bits:#x})."
                ));
            }
        }
    }
}
