//! Upgrades of a database with data in it: the schema of the previous version, rows written the
//! way it wrote them, then a server of this version started on it.

use std::process::Command;
use std::sync::Arc;

use chrono::Utc;
use latchkey::store::{HourCount, UsageDelta, hour_start};

use serde_json::Value;
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{BIN, TestDatabase, postgres_admin_url, spawn_node};

/// Applies the PostgreSQL migrations numbered below `before` (the previous version's schema), as
/// that version's server did: sqlx's migrator, so the next server sees them as applied.
async fn migrate_to_previous_version(url: &str, before: u32) {
    let dir = tempfile::TempDir::new().unwrap();
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let number: u32 = name[..4].parse().unwrap();
        if number < before {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    migrator.run(&mut conn).await.unwrap();
}

/// A database of the schema before migration `before`, with an org and one of its tokens
/// (named `used`), written as that version wrote them; a connection to it and the token's id.
async fn previous_version_with_a_token(
    test: &str,
    before: u32,
) -> (TestDatabase, sqlx::PgConnection, Uuid) {
    let admin = postgres_admin_url(test);
    let db = TestDatabase::create(&admin).await;
    migrate_to_previous_version(&db.url, before).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (org, token) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, 'acme', now())")
        .bind(org)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, \
         created_at, created_by, family_id) \
         VALUES ($1, $2, 'used', 'used', 1, $3, 4, now(), 'system', $1)",
    )
    .bind(token)
    .bind(org)
    .bind(format!("sha256:{}", "ab".repeat(32)))
    .execute(&mut conn)
    .await
    .unwrap();
    (db, conn, token)
}

/// Two uses of `token` in `hour`, as this version's flush hands them to the store.
fn two_uses(token: Uuid, hour: chrono::DateTime<Utc>) -> Arc<[UsageDelta]> {
    Arc::from([UsageDelta {
        token_id: token,
        count: 2,
        last_used_at: hour,
        ips: vec![],
        hours: vec![HourCount { hour, count: 2 }],
    }])
}

#[tokio::test]
async fn usage_counted_before_the_narrow_usage_table_is_kept_and_old_nodes_statements_still_run() {
    // Arrange: the schema before migration 0005, an org and a token with usage in its own row.
    let admin = postgres_admin_url("usage_counted_before_the_narrow_usage_table_is_kept");
    let db = TestDatabase::create(&admin).await;
    migrate_to_previous_version(&db.url, 5).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (org, used, idle) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, 'acme', now())")
        .bind(org)
        .execute(&mut conn)
        .await
        .unwrap();
    for (id, name, count, ips) in [
        (
            used,
            "used",
            42_i64,
            r#"[{"ip": "192.0.2.7", "last_seen_at": "2026-11-30T10:00:00Z"}]"#,
        ),
        (idle, "idle", 0, "[]"),
    ] {
        sqlx::query(
            "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, \
             created_at, created_by, last_used_at, request_count, family_id, client_ips) \
             VALUES ($1, $2, $3, $3, 1, $4, 4, now(), 'system', \
             CASE WHEN $5 > 0 THEN '2026-11-30T10:00:00Z'::timestamptz END, $5, $1, $6::jsonb)",
        )
        .bind(id)
        .bind(org)
        .bind(name)
        .bind(format!("sha256:{}", "ab".repeat(32)))
        .bind(count)
        .bind(ips)
        .execute(&mut conn)
        .await
        .unwrap();
    }

    // Act: a server of this version migrates the database; an admin token to read with.
    let node = spawn_node(&db.url, &[]).await;
    let out = Command::new(BIN)
        .args(["bootstrap", "--database-url", &db.url, "--org-name", "acme"])
        .output()
        .unwrap();
    let admin_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let view = |id: Uuid| {
        let (node, token) = (&node, admin_token.clone());
        async move {
            let res = node.get(&format!("/v1/tokens/{id}"), &token).await;
            assert_eq!(res.status(), reqwest::StatusCode::OK);
            res.json::<Value>().await.unwrap()
        }
    };
    let used_view = view(used).await;
    let idle_view = view(idle).await;
    // The statements a node of the previous version runs on a flush still succeed.
    let old_flush = sqlx::query(
        "UPDATE tokens SET request_count = request_count + 1, last_used_at = now() WHERE id = $1",
    )
    .bind(used)
    .execute(&mut conn)
    .await;

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(used_view["request_count"], 42);
    assert_eq!(used_view["last_used_at"], "2026-11-30T10:00:00Z");
    assert_eq!(used_view["client_ips"][0]["ip"], "192.0.2.7");
    assert_eq!(idle_view["request_count"], 0);
    assert_eq!(idle_view["last_used_at"], Value::Null);
    assert!(old_flush.is_ok(), "{old_flush:?}");
    let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM token_usage")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(moved, 1, "only the token with usage has a usage row");
    drop(node);
}

#[tokio::test]
async fn hours_counted_by_nodes_of_the_previous_version_add_up_with_the_current_hour_in_the_usage_row()
 {
    // Arrange: the schema before migration 0006, a token whose current hour a node of that
    // version counted in `token_usage_hourly`.
    let (db, mut conn, token) =
        previous_version_with_a_token("hours_counted_by_nodes_of_the_previous_version", 6).await;
    let hour = hour_start(Utc::now());
    // What the previous version's flush writes (its statements, as they were).
    let old_flush = |n: i64| {
        sqlx::query(
            "INSERT INTO token_usage_hourly (token_id, hour, count) VALUES ($1, $2, $3) \
             ON CONFLICT (token_id, hour) DO UPDATE \
             SET count = token_usage_hourly.count + excluded.count",
        )
        .bind(token)
        .bind(hour)
        .bind(n)
    };
    old_flush(3).execute(&mut conn).await.unwrap();

    // Act: this version migrates and counts the same hour; an old node still flushes after.
    let store = latchkey::store::connect(&db.url).await.unwrap();
    store.add_usage(two_uses(token, hour)).await.unwrap();
    let old_after = old_flush(5).execute(&mut conn).await;
    let hours = store.usage_hours(token, hour).await.unwrap();

    // Assert
    assert!(old_after.is_ok(), "{old_after:?}");
    assert_eq!(hours, [HourCount { hour, count: 10 }]);
}

#[tokio::test]
async fn the_usage_table_keeps_its_rows_and_leaves_room_for_in_place_updates_after_the_upgrade() {
    // Arrange: the schema before migration 0007, a token with usage counted by that version.
    let (db, mut conn, token) =
        previous_version_with_a_token("the_usage_table_leaves_room_for_in_place_updates", 7).await;
    let hour = hour_start(Utc::now());
    sqlx::query(
        "INSERT INTO token_usage (token_id, request_count, last_used_at, hour, hour_count) \
         VALUES ($1, 7, $2, $2, 7)",
    )
    .bind(token)
    .bind(hour)
    .execute(&mut conn)
    .await
    .unwrap();

    // Act: this version migrates and counts two more uses.
    let store = latchkey::store::connect(&db.url).await.unwrap();
    store.add_usage(two_uses(token, hour)).await.unwrap();

    // Assert
    let options: Option<Vec<String>> =
        sqlx::query_scalar("SELECT reloptions FROM pg_class WHERE relname = 'token_usage'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(options.unwrap_or_default(), ["fillfactor=50"]);
    let count: i64 =
        sqlx::query_scalar("SELECT request_count FROM token_usage WHERE token_id = $1")
            .bind(token)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(count, 9);
    assert_eq!(
        store.usage_hours(token, hour).await.unwrap(),
        [HourCount { hour, count: 9 }]
    );
}
