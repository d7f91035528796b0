//! The OpenAPI document says exactly what the server does: the mismatches schemathesis found
//! (`.ci/schemathesis.sh` runs it on every CI run), each held here by a test of its own.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

async fn document(app: &TestApp) -> Value {
    app.request(Method::GET, "/v1/openapi.json", None, None)
        .await
        .json()
        .await
        .unwrap()
}

/// Every operation of the document as (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn a_verify_body_that_is_a_json_array_is_refused_with_400() {
    // Arrange: serde would read an array as the fields in order.
    let app = spawn_app().await;
    let body = json!([app.admin_token, []]).to_string();

    // Act
    let res = app
        .post_raw("/v1/tokens/verify", "", "application/json", body)
        .await;

    // Assert
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_argument");
    assert_eq!(
        v["error"]["message"],
        "the request body must be a JSON object"
    );
}

#[tokio::test]
async fn a_create_body_that_is_not_a_json_object_is_refused_with_400() {
    // Arrange
    let app = spawn_app().await;

    for body in [r#"["ci"]"#, "\"ci\"", "42", "null", " \n[]"] {
        // Act
        let res = app
            .post_raw("/v1/tokens", &app.admin_token, "application/json", body)
            .await;

        // Assert
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
    }
}

#[tokio::test]
async fn every_rate_limited_route_documents_429_with_retry_after() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;
    // Routes with a limit of their own, besides every authenticated one (the management limit).
    let own_limit = [
        "GET /v1/auth/check",
        "POST /v1/tokens/leaked",
        "POST /v1/auth/token",
        "POST /v1/auth/session",
        "POST /v1/auth/setup",
    ];

    // Act
    let ops = operations(&doc);

    // Assert
    let mut limited = 0;
    for (method, path, op) in &ops {
        let name = format!("{method} {path}");
        if op.get("security").is_none() && !own_limit.contains(&name.as_str()) {
            continue;
        }
        limited += 1;
        let r = &op["responses"]["429"];
        assert!(r.is_object(), "{name} does not document 429");
        assert_eq!(r["headers"]["Retry-After"]["required"], true, "{name}");
    }
    assert!(limited >= 25, "only {limited} rate-limited routes");
}

#[tokio::test]
async fn every_route_documents_the_answers_of_the_accept_loop_and_the_body_limit() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;

    // Act
    let ops = operations(&doc);

    // Assert: 503 past the in-flight cap everywhere; 408 wherever a handler waits; 413 and 400
    // wherever a body is read.
    for (method, path, op) in &ops {
        let name = format!("{method} {path}");
        let responses = &op["responses"];
        assert!(responses["503"].is_object(), "{name} lacks 503");
        if !["/healthz", "/metrics", "/v1/openapi.json"].contains(&path.as_str()) {
            assert!(responses["408"].is_object(), "{name} lacks 408");
        }
        if op.get("requestBody").is_some() {
            assert!(responses["413"].is_object(), "{name} lacks 413");
            assert!(responses["400"].is_object(), "{name} lacks 400");
        }
        if op.get("security").is_some() {
            assert!(responses["401"].is_object(), "{name} lacks 401");
            assert!(responses["403"].is_object(), "{name} lacks 403");
        }
    }
}

#[tokio::test]
async fn the_name_rules_are_in_the_schema_of_every_body_with_a_name() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];

    for body in [
        "CreateTokenRequest",
        "CreateOrgRequest",
        "CreateUserRequest",
        "UpdateUserRequest",
        "ExchangePasswordRequest",
    ] {
        // Act
        let name = &schemas[body]["properties"]["name"];

        // Assert
        assert_eq!(name["minLength"], 1, "{body}");
        assert_eq!(name["maxLength"], 100, "{body}");
        assert_eq!(name["pattern"], "^[A-Za-z0-9 ._:-]{1,100}$", "{body}");
    }
}

#[tokio::test]
async fn an_empty_name_breaks_the_documented_pattern_and_the_server_refuses_it() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;
    let pattern =
        doc["components"]["schemas"]["CreateTokenRequest"]["properties"]["name"]["pattern"]
            .as_str()
            .unwrap()
            .to_string();

    // Act
    let res = app
        .post("/v1/tokens", &app.admin_token, json!({ "name": "" }))
        .await;

    // Assert: `{1,100}` in the pattern, and 400 from the server.
    assert!(pattern.ends_with("{1,100}$"));
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_invalid_verify_answer_is_one_of_the_documented_shapes() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];

    // Act
    let answer: Value = app
        .request(
            Method::POST,
            "/v1/tokens/verify",
            None,
            Some(json!({ "token": "lk_pat_not-a-token" })),
        )
        .await
        .json()
        .await
        .unwrap();

    // Assert: the answer is `{"valid": false, "code": "INVALID"}`, which the document's
    // InvalidVerdict describes exactly and the token shape does not admit.
    assert_eq!(answer, json!({ "valid": false, "code": "INVALID" }));
    let shapes: Vec<&str> = schemas["VerifyResponse"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["$ref"].as_str().unwrap())
        .collect();
    assert!(shapes.contains(&"#/components/schemas/InvalidVerdict"));
    let invalid = &schemas["InvalidVerdict"];
    assert_eq!(invalid["additionalProperties"], false);
    let mut required: Vec<&str> = invalid["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["code", "valid"]);
    assert_eq!(schemas["InvalidVerdictCode"]["enum"], json!(["INVALID"]));
    let token_required = schemas["TokenVerdict"]["required"].as_array().unwrap();
    assert!(token_required.contains(&json!("token_id")));
}

#[tokio::test]
async fn the_page_token_is_documented_as_an_id_cursor_and_any_id_is_accepted() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;
    let list = &doc["paths"]["/v1/tokens"]["get"]["parameters"];
    let page_token = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "page_token")
        .unwrap();

    // Act
    let any_id = app
        .get(
            &format!("/v1/tokens?page_token={}", Uuid::now_v7()),
            &app.admin_token,
        )
        .await;
    let not_an_id = app
        .get("/v1/tokens?page_token=next", &app.admin_token)
        .await;

    // Assert
    let pattern = page_token["schema"]["pattern"].as_str().unwrap();
    assert!(pattern.starts_with("^([0-9A-Fa-f]{8}-"), "{pattern}");
    assert_eq!(any_id.status(), StatusCode::OK);
    assert_eq!(not_an_id.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_lifetime_bounds_are_in_the_schema_and_a_whole_number_with_a_fraction_is_an_integer() {
    // Arrange: JSON Schema counts 3600.0 as the integer 3600.
    let app = spawn_app().await;
    let doc = document(&app).await;
    let ttl = &doc["components"]["schemas"]["CreateTokenRequest"]["properties"]["ttl_seconds"];

    // Act
    let whole = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({ "name": "whole", "ttl_seconds": 3600.0 }),
        )
        .await;
    let fraction = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({ "name": "fraction", "ttl_seconds": 3600.5 }),
        )
        .await;

    // Assert: bounded, and not together with `expires_at` (a `not` over both, non-null).
    let both = &doc["components"]["schemas"]["CreateTokenRequest"]["not"];
    assert_eq!(both["required"], json!(["expires_at", "ttl_seconds"]));
    assert_eq!(ttl["minimum"], 1);
    assert_eq!(ttl["maximum"], 316_224_000);
    assert_eq!(whole.status(), StatusCode::CREATED);
    assert_eq!(fraction.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_deployment_scopes_are_listed_and_the_permission_bitmap_is_bounded() {
    // Arrange
    let app = spawn_app().await;
    let doc = document(&app).await;
    let props = &doc["components"]["schemas"]["CreateTokenRequest"]["properties"];

    // Act
    let beyond = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({ "name": "beyond", "permissions": 1024 }),
        )
        .await;
    let unknown = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({ "name": "unknown", "scopes": ["runs:read"] }),
        )
        .await;

    // Assert: bits 0-9 are the system scopes, so 1023 is the largest bitmap.
    let names = props["scopes"]["items"]["enum"].as_array().unwrap();
    assert!(names.contains(&json!("tokens:read")));
    assert!(names.contains(&json!("users:manage")));
    assert!(!names.contains(&json!("runs:read")));
    assert_eq!(props["permissions"]["maximum"], 1023);
    assert_eq!(beyond.status(), StatusCode::BAD_REQUEST);
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

/// Every integer schema in the document as (where, schema).
fn integer_schemas(v: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            if m.get("type") == Some(&json!("integer")) {
                out.push((at.clone(), v.clone()));
            }
            for (k, child) in m {
                integer_schemas(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                integer_schemas(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_integer_bound_fits_its_format_and_the_page_size_maximum_is_accepted() {
    // Arrange: schemathesis once sent page_size=2147483648, beyond the `int32` the document
    // declared though its maximum was u32's, and reported the 200 as a schema violation accepted.
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut ints = Vec::new();
    integer_schemas(&doc, String::new(), &mut ints);

    // Act
    let at_max = app
        .get("/v1/tokens?page_size=4294967295", &app.admin_token)
        .await;
    let above_max = app
        .get("/v1/tokens?page_size=4294967296", &app.admin_token)
        .await;

    // Assert
    assert!(ints.len() > 3, "{ints:?}");
    for (at, s) in &ints {
        let (lo, hi) = match s["format"].as_str() {
            Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
            Some("int64") | None => (i64::MIN, i64::MAX),
            Some(other) => panic!("{at}: unexpected integer format {other}"),
        };
        for bound in ["minimum", "maximum"] {
            if let Some(b) = s.get(bound) {
                let b = b.as_i64().unwrap_or_else(|| panic!("{at}: {bound} {b}"));
                assert!((lo..=hi).contains(&b), "{at}: {bound} {b} outside {s}");
            }
        }
    }
    assert_eq!(at_max.status(), StatusCode::OK);
    assert_eq!(above_max.status(), StatusCode::BAD_REQUEST);
}
