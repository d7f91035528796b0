//! One conformance suite for the `Store` trait. Every check is written once, against
//! `Arc<dyn Store>`, and runs on SQLite and on PostgreSQL (each test in its own fresh database,
//! on the server of `helpers::postgres_admin_url`: `LATCHKEY_TEST_DATABASE_URL`, or a throwaway
//! cluster the tests start; without either the PostgreSQL tests fail, saying so). The backends
//! must agree on everything the service can observe: ordering, cursors, timestamp precision,
//! conflicts, idempotency.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use latchkey::store::{
    self, AuditListQuery, AuditRecord, ClientIp, EndSessions, HourCount, Invalidation, OrgRecord,
    RevokeOwned, SessionRecord, StateFilter, Store, StoreError, TokenListQuery, TokenRecord,
    UsageDelta, UserChange, UserListQuery, UserRecord, VerifyRecord, Visibility, hour_start,
};
use latchkey::token::{Permissions, Role, TokenKind};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use crate::helpers::{TestDatabase, postgres_admin_url};

/// A store under test and what keeps its database alive.
struct Backend {
    store: Arc<dyn Store>,
    url: String,
    _dir: Option<TempDir>,
    _db: Option<TestDatabase>,
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = TempDir::new().unwrap();
        let url = crate::helpers::db_url(dir.path());
        Self {
            store: store::connect(&url).await.unwrap(),
            url,
            _dir: Some(dir),
            _db: None,
        }
    }

    async fn postgres(test: &str) -> Self {
        let admin = postgres_admin_url(test);
        let db = TestDatabase::create(&admin).await;
        Self {
            store: store::connect(&db.url).await.unwrap(),
            url: db.url.clone(),
            _dir: None,
            _db: Some(db),
        }
    }

    /// Another handle on the same database: what a second node would open.
    async fn another_handle(&self) -> Arc<dyn Store> {
        store::connect(&self.url).await.unwrap()
    }
}

/// Runs each check as `<check>::on_sqlite` and `<check>::on_postgres`.
macro_rules! on_every_backend {
    (one_handle: [$($check:ident),* $(,)?], two_handles: [$($check2:ident),* $(,)?] $(,)?) => {
        $(
            mod $check {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let backend = super::Backend::sqlite().await;
                    super::$check(backend.store.clone()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let backend = super::Backend::postgres(module_path!()).await;
                    super::$check(backend.store.clone()).await;
                }
            }
        )*
        $(
            mod $check2 {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let backend = super::Backend::sqlite().await;
                    let other = backend.another_handle().await;
                    super::$check2(backend.store.clone(), other).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let backend = super::Backend::postgres(module_path!()).await;
                    let other = backend.another_handle().await;
                    super::$check2(backend.store.clone(), other).await;
                }
            }
        )*
    };
}

on_every_backend! {
    one_handle: [
        orgs_round_trip_and_their_names_are_unique,
        every_token_field_round_trips,
        timestamps_keep_microseconds_and_drop_nanoseconds,
        tokens_are_listed_newest_first_and_paged_by_an_id_cursor,
        tokens_are_filtered_by_state_and_creator,
        a_second_live_token_with_the_same_name_in_an_org_is_a_conflict,
        concurrent_creation_of_one_name_leaves_one_live_token,
        concurrent_creations_each_get_their_own_answer_and_audit_event,
        revoking_twice_changes_nothing_the_second_time,
        rotation_replaces_a_live_token_once,
        revoking_a_family_revokes_each_live_member_once,
        disabling_and_enabling_change_a_token_once_each,
        audit_events_are_filtered_and_paged_newest_first,
        usage_adds_up_and_keeps_the_latest_use_and_addresses,
        usage_from_the_same_address_again_moves_only_its_time_and_a_late_one_moves_nothing_back,
        concurrent_usage_flushes_lose_no_counts,
        hourly_counts_add_up_per_hour_and_hours_before_a_cutoff_are_deleted,
        hourly_counts_add_up_across_flushes_that_move_to_a_later_hour_and_back,
        a_usage_flush_of_thousands_of_tokens_counts_each_one,
        the_verify_read_returns_the_verify_columns_of_the_ids_that_exist,
        tokens_are_filtered_by_visibility_and_owner,
        audit_events_are_written_on_their_own,
        a_user_round_trips_and_its_email_is_unique_in_any_case_across_orgs,
        a_user_is_found_by_email_in_another_case_and_by_its_setup_hash,
        users_are_listed_newest_first_and_paged_by_an_id_cursor,
        active_admins_are_counted_per_org_leaving_out_members_and_disabled_ones,
        a_user_update_replaces_every_field_it_may_change_and_writes_its_events,
        an_update_to_a_taken_email_is_a_conflict_and_changes_nothing,
        disabling_a_user_revokes_each_live_token_it_owns_with_an_event_each,
        a_demotion_revokes_only_the_live_owned_tokens_holding_a_bit_outside_the_new_set,
        a_token_owned_by_a_disabled_or_missing_user_is_refused_and_writes_nothing,
        rotating_a_token_of_a_disabled_user_is_refused_and_changes_nothing,
        concurrent_inserts_with_a_disabled_owner_among_them_each_get_their_own_answer,
        mints_racing_the_disable_of_their_owner_leave_none_of_its_tokens_live,
        a_user_update_ends_the_sessions_it_names_with_an_event_each,
        ending_sessions_deletes_only_the_ones_named_with_an_event_each,
        a_new_session_records_the_sign_in_and_is_found_by_its_secret_hash,
        sessions_end_when_idle_too_long_or_past_their_absolute_end,
    ],
    two_handles: [
        changes_through_one_handle_are_announced_to_the_others,
        a_token_created_through_one_handle_is_read_by_another,
        tokens_revoked_by_a_user_update_are_announced_to_the_others,
    ],
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A fixed instant plus `secs` seconds: tests never read the clock.
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap()
}

fn new_org(name: &str) -> OrgRecord {
    OrgRecord {
        id: Uuid::now_v7(),
        name: name.to_string(),
        created_at: at(0),
        max_ttl_seconds: None,
        default_ttl_seconds: None,
    }
}

fn new_token(org: &OrgRecord, name: &str) -> TokenRecord {
    new_token_with_id(org, name, Uuid::now_v7())
}

fn new_token_with_id(org: &OrgRecord, name: &str, id: Uuid) -> TokenRecord {
    TokenRecord {
        id,
        org_id: org.id,
        name: name.to_string(),
        kind: TokenKind::Pat,
        verifier: format!("sha256:{}", "ab".repeat(32)),
        permissions: Permissions::from_bits(0b101),
        created_at: at(1),
        created_by: "bootstrap".to_string(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        request_count: 0,
        replaced_by: None,
        metadata: None,
        family_id: id,
        disabled_at: None,
        client_ips: Vec::new(),
        user_id: None,
        lookup: None,
    }
}

/// A live token owned by `user`, minted through its session.
fn owned_token(org: &OrgRecord, name: &str, user: &UserRecord) -> TokenRecord {
    let mut t = new_token(org, name);
    t.created_by = format!("user:{}", user.id);
    t.user_id = Some(user.id);
    t
}

fn new_user(org: &OrgRecord, email: &str) -> UserRecord {
    UserRecord {
        id: Uuid::now_v7(),
        org_id: org.id,
        email: email.to_string(),
        name: "Ann Lee".to_string(),
        role: Role::Member,
        platform_admin: false,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".to_string()),
        created_at: at(1),
        created_by: "bootstrap".to_string(),
        last_login_at: None,
        disabled_at: None,
        setup_hash: None,
        setup_expires_at: None,
    }
}

/// A session of `user` created (and last seen) at `at(secs)`, ending 8 hours later.
fn new_session(user: &UserRecord, secs: i64) -> SessionRecord {
    let id = Uuid::now_v7();
    SessionRecord {
        id,
        secret_hash: format!("{}{}", id.simple(), id.simple()),
        user_id: user.id,
        org_id: user.org_id,
        created_at: at(secs),
        last_seen_at: at(secs),
        expires_at: at(secs + 8 * 3600),
        ip: Some("192.0.2.7".to_string()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".to_string()),
    }
}

/// A change to the user row alone.
fn row_only() -> UserChange<'static> {
    UserChange {
        revoke: RevokeOwned::None,
        end_sessions: EndSessions::None,
        revoke_event: None,
        session_event: None,
    }
}

fn event(org: &OrgRecord, action: &str, token: Option<Uuid>, when: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        id: Uuid::now_v7(),
        org_id: org.id,
        occurred_at: when,
        actor: "bootstrap".to_string(),
        action: action.to_string(),
        token_id: token,
        ip: None,
        user_agent: None,
        details: json!({}),
    }
}

fn tokens_of(org: &OrgRecord) -> TokenListQuery {
    TokenListQuery {
        org_id: org.id,
        visible_to: None,
        owner: None,
        name_contains: None,
        state: None,
        format: None,
        before_id: None,
        limit: 100,
        now: at(100),
    }
}

fn audit_of(org: &OrgRecord) -> AuditListQuery {
    AuditListQuery {
        org_id: org.id,
        token_id: None,
        action: None,
        actor: None,
        since: None,
        until: None,
        before_id: None,
        limit: 100,
    }
}

fn ip(addr: &str, secs: i64) -> ClientIp {
    ClientIp {
        ip: addr.to_string(),
        last_seen_at: at(secs),
    }
}

fn usage(token: Uuid, count: i64, secs: i64, ips: Vec<ClientIp>) -> UsageDelta {
    UsageDelta {
        token_id: token,
        count,
        last_used_at: at(secs),
        ips,
        hours: vec![HourCount {
            hour: hour_start(at(secs)),
            count,
        }],
    }
}

async fn org_in(store: &Arc<dyn Store>, name: &str) -> OrgRecord {
    let org = new_org(name);
    store.create_org(&org, None, &[]).await.unwrap();
    org
}

async fn user_in(store: &Arc<dyn Store>, org: &OrgRecord, email: &str) -> UserRecord {
    let user = new_user(org, email);
    store.insert_user(&user, &[]).await.unwrap();
    user
}

async fn session_of(store: &Arc<dyn Store>, user: &UserRecord, secs: i64) -> SessionRecord {
    let session = new_session(user, secs);
    store.insert_session(&session, &[]).await.unwrap();
    session
}

async fn user(store: &Arc<dyn Store>, id: Uuid) -> UserRecord {
    store.get_user(id).await.unwrap().expect("user exists")
}

/// The org's events with this action, newest first.
async fn events_named(store: &Arc<dyn Store>, org: &OrgRecord, action: &str) -> Vec<AuditRecord> {
    store
        .list_audit(&AuditListQuery {
            action: Some(action.to_string()),
            ..audit_of(org)
        })
        .await
        .unwrap()
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

async fn inserted(store: &Arc<dyn Store>, token: TokenRecord) -> TokenRecord {
    store.insert_token(&token, &[], at(1)).await.unwrap();
    token
}

async fn get(store: &Arc<dyn Store>, id: Uuid) -> TokenRecord {
    store.get_token(id).await.unwrap().expect("token exists")
}

fn ids(tokens: &[TokenRecord]) -> Vec<Uuid> {
    tokens.iter().map(|t| t.id).collect()
}

fn conflict_message<T: std::fmt::Debug>(res: Result<T, StoreError>) -> String {
    match res {
        Err(StoreError::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

async fn orgs_round_trip_and_their_names_are_unique(store: Arc<dyn Store>) {
    // Arrange
    let mut org = new_org("acme");
    org.max_ttl_seconds = Some(86_400);
    let first = new_token(&org, "admin");
    assert_eq!(store.org_count().await.unwrap(), 0);

    // Act
    store
        .create_org(
            &org,
            Some(&first),
            &[event(&org, "bootstrap", Some(first.id), at(0))],
        )
        .await
        .unwrap();
    let duplicate = store.create_org(&new_org("acme"), None, &[]).await;
    let mut policy = org.clone();
    policy.default_ttl_seconds = Some(3600);
    store
        .update_org(&policy, &event(&org, "org_updated", None, at(2)))
        .await
        .unwrap();

    // Assert
    assert_eq!(
        conflict_message(duplicate),
        "an org named \"acme\" already exists"
    );
    assert_eq!(store.org_count().await.unwrap(), 1);
    assert_eq!(store.get_org(org.id).await.unwrap(), Some(policy.clone()));
    assert_eq!(store.find_org_by_name("acme").await.unwrap(), Some(policy));
    assert_eq!(store.find_org_by_name("ACME").await.unwrap(), None);
    assert_eq!(store.get_org(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(get(&store, first.id).await, first);
    let actions: Vec<String> = store
        .list_audit(&audit_of(&org))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["org_updated", "bootstrap"]);
}

async fn every_token_field_round_trips(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let plain = new_token(&org, "plain");
    let mut full = new_token(&org, "full");
    full.kind = TokenKind::Svc;
    full.permissions = Permissions::from_bits(u64::MAX);
    full.created_by = format!("token:{}", plain.id);
    full.expires_at = Some(at(1_000));
    full.last_used_at = Some(at(50));
    full.request_count = 7;
    full.replaced_by = Some(plain.id);
    full.family_id = plain.id;
    full.disabled_at = Some(at(40));
    full.metadata = Some(json!({
        "team": "payments – ünïcode ✓",
        "nested": {"list": [1, 2.5, -3, true, null], "big": 9_007_199_254_740_993_i64},
        "empty": {},
    }));
    full.client_ips = vec![ip("2001:db8::1", 50), ip("10.0.0.1", 20)];
    full.user_id = Some(user_in(&store, &org, "ann@example.com").await.id);

    // Act
    store.insert_token(&plain, &[], at(1)).await.unwrap();
    store.insert_token(&full, &[], at(1)).await.unwrap();

    // Assert
    assert_eq!(get(&store, plain.id).await, plain);
    assert_eq!(get(&store, full.id).await, full);
    assert_eq!(store.get_token(Uuid::now_v7()).await.unwrap(), None);
}

async fn timestamps_keep_microseconds_and_drop_nanoseconds(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let nanos = TimeDelta::nanoseconds(123_456_789);
    let micros = TimeDelta::microseconds(123_456);
    let mut token = new_token(&org, "precise");
    token.created_at = at(1) + nanos;
    token.expires_at = Some(at(100) + nanos);
    let mut created = event(&org, "token_created", Some(token.id), at(1) + nanos);
    created.ip = Some("192.0.2.1".into());

    // Act
    store
        .insert_token(&token, std::slice::from_ref(&created), at(1))
        .await
        .unwrap();
    store
        .add_usage(Arc::from([UsageDelta {
            token_id: token.id,
            count: 1,
            last_used_at: at(2) + nanos,
            ips: vec![ClientIp {
                ip: "192.0.2.1".into(),
                last_seen_at: at(2) + nanos,
            }],
            hours: vec![],
        }]))
        .await
        .unwrap();
    let read = get(&store, token.id).await;
    let events = store.list_audit(&audit_of(&org)).await.unwrap();
    let expired_at = |now| {
        let store = store.clone();
        let mut q = tokens_of(&org);
        q.state = Some(StateFilter::Expired);
        q.now = now;
        async move { ids(&store.list_tokens(&q).await.unwrap()) }
    };

    // Assert
    assert_eq!(read.created_at, at(1) + micros);
    assert_eq!(read.expires_at, Some(at(100) + micros));
    assert_eq!(read.last_used_at, Some(at(2) + micros));
    assert_eq!(read.client_ips[0].last_seen_at, at(2) + micros);
    assert_eq!(events[0].occurred_at, at(1) + micros);
    // Expiry compares at microsecond precision: expired at its instant, not one microsecond before.
    assert_eq!(expired_at(at(100) + micros).await, [token.id]);
    assert_eq!(expired_at(at(100) + nanos).await, [token.id]);
    assert!(
        expired_at(at(100) + micros - TimeDelta::microseconds(1))
            .await
            .is_empty()
    );
}

async fn tokens_are_listed_newest_first_and_paged_by_an_id_cursor(store: Arc<dyn Store>) {
    // Arrange: ids whose order mixes digits and letters, inserted out of order.
    let org = org_in(&store, "acme").await;
    let other = org_in(&store, "other").await;
    let id =
        |last: u8| Uuid::from_u128(0x0192_f3c4_0000_7000_8000_0000_0000_0000 | u128::from(last));
    for last in [0x10, 0xff, 0x09, 0xa0, 0x0a, 0x9f] {
        inserted(
            &store,
            new_token_with_id(&org, &format!("t{last:02x}"), id(last)),
        )
        .await;
    }
    inserted(&store, new_token(&other, "elsewhere")).await;
    let page = |before: Option<Uuid>| {
        let store = store.clone();
        let q = TokenListQuery {
            before_id: before,
            limit: 4,
            ..tokens_of(&org)
        };
        async move { store.list_tokens(&q).await.unwrap() }
    };

    // Act
    let first = page(None).await;
    let second = page(first.last().map(|t| t.id)).await;
    let third = page(second.last().map(|t| t.id)).await;

    // Assert
    assert_eq!(ids(&first), [id(0xff), id(0xa0), id(0x9f), id(0x10)]);
    assert_eq!(ids(&second), [id(0x0a), id(0x09)]);
    assert!(third.is_empty());
    assert_eq!(first[0], new_token_with_id(&org, "tff", id(0xff)));
}

async fn tokens_are_filtered_by_state_and_creator(store: Arc<dyn Store>) {
    // Arrange: `now` is at(100) in every query.
    let org = org_in(&store, "acme").await;
    let active = inserted(&store, new_token(&org, "active")).await;
    let mut mine = new_token(&org, "mine");
    mine.created_by = "token:me".into();
    mine.expires_at = Some(at(101));
    let mine = inserted(&store, mine).await;
    let mut expired = new_token(&org, "expired");
    expired.expires_at = Some(at(100));
    let expired = inserted(&store, expired).await;
    let mut revoked = new_token(&org, "revoked");
    revoked.expires_at = Some(at(50));
    let revoked = inserted(&store, revoked).await;
    store
        .revoke_token(
            revoked.id,
            at(10),
            &event(&org, "token_revoked", None, at(10)),
        )
        .await
        .unwrap();
    let mut disabled = new_token(&org, "disabled");
    disabled.disabled_at = Some(at(5));
    let disabled = inserted(&store, disabled).await;
    let mut disabled_expired = new_token(&org, "disabled and expired");
    disabled_expired.disabled_at = Some(at(5));
    disabled_expired.expires_at = Some(at(60));
    let disabled_expired = inserted(&store, disabled_expired).await;
    let list = |state: Option<StateFilter>, created_by: Option<&str>| {
        let store = store.clone();
        let q = TokenListQuery {
            state,
            visible_to: created_by.map(|actor| Visibility {
                actor: actor.to_string(),
                user_id: None,
            }),
            ..tokens_of(&org)
        };
        async move { ids(&store.list_tokens(&q).await.unwrap()) }
    };

    // Act + Assert: a token is in one state, checked as revoked, expired, disabled, active.
    assert_eq!(
        list(None, None).await,
        [
            disabled_expired.id,
            disabled.id,
            revoked.id,
            expired.id,
            mine.id,
            active.id
        ]
    );
    assert_eq!(
        list(Some(StateFilter::Active), None).await,
        [mine.id, active.id]
    );
    assert_eq!(
        list(Some(StateFilter::Expired), None).await,
        [disabled_expired.id, expired.id]
    );
    assert_eq!(list(Some(StateFilter::Revoked), None).await, [revoked.id]);
    assert_eq!(list(Some(StateFilter::Disabled), None).await, [disabled.id]);
    assert_eq!(list(None, Some("token:me")).await, [mine.id]);
    assert_eq!(
        list(Some(StateFilter::Active), Some("token:me")).await,
        [mine.id]
    );
    assert!(
        list(Some(StateFilter::Expired), Some("token:me"))
            .await
            .is_empty()
    );
}

async fn a_second_live_token_with_the_same_name_in_an_org_is_a_conflict(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let other = org_in(&store, "other").await;
    let holder = inserted(&store, new_token(&org, "deploy")).await;
    let mut expiring = new_token(&org, "ci");
    expiring.expires_at = Some(at(10));
    inserted(&store, expiring).await;
    let second = new_token(&org, "deploy");

    // Act
    let refused = store
        .insert_token(
            &second,
            &[event(&org, "token_created", Some(second.id), at(2))],
            at(2),
        )
        .await;
    let in_other_org = store
        .insert_token(&new_token(&other, "deploy"), &[], at(2))
        .await;
    let ci_before_expiry = store.insert_token(&new_token(&org, "ci"), &[], at(9)).await;
    let ci_at_expiry = store
        .insert_token(&new_token(&org, "ci"), &[], at(10))
        .await;
    store
        .revoke_token(holder.id, at(3), &event(&org, "token_revoked", None, at(3)))
        .await
        .unwrap();
    let after_revoke = store
        .insert_token(&new_token(&org, "deploy"), &[], at(4))
        .await;

    // Assert
    assert_eq!(
        conflict_message(refused),
        "a live token named \"deploy\" already exists in this org"
    );
    assert_eq!(store.get_token(second.id).await.unwrap(), None);
    let events = store
        .list_audit(&AuditListQuery {
            token_id: Some(second.id),
            ..audit_of(&org)
        })
        .await
        .unwrap();
    assert!(events.is_empty(), "the refused insert wrote {events:?}");
    in_other_org.unwrap();
    assert_eq!(
        conflict_message(ci_before_expiry),
        "a live token named \"ci\" already exists in this org"
    );
    ci_at_expiry.unwrap();
    after_revoke.unwrap();
}

async fn concurrent_creation_of_one_name_leaves_one_live_token(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let candidates: Vec<TokenRecord> = (0..8).map(|_| new_token(&org, "race")).collect();

    // Act
    let tasks: Vec<_> = candidates
        .iter()
        .cloned()
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_token(&t, &[], at(1)).await })
        })
        .collect();
    let mut created = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }

    // Assert
    assert_eq!((created, conflicts), (1, 7));
    assert_eq!(store.list_tokens(&tokens_of(&org)).await.unwrap().len(), 1);
}

async fn concurrent_creations_each_get_their_own_answer_and_audit_event(store: Arc<dyn Store>) {
    // Arrange: many distinct names, four racers for one name, and a name held by an expired token
    // (which a new token may take), all at once so that the SQLite backend commits them in groups.
    let org = org_in(&store, "acme").await;
    let mut expired = new_token(&org, "reused");
    expired.expires_at = Some(at(2));
    inserted(&store, expired.clone()).await;
    let mut candidates: Vec<TokenRecord> =
        (0..40).map(|i| new_token(&org, &format!("t{i}"))).collect();
    candidates.extend((0..4).map(|_| new_token(&org, "dup")));
    candidates.push(new_token(&org, "reused"));

    // Act
    let tasks: Vec<_> = candidates
        .iter()
        .cloned()
        .map(|t| {
            let store = store.clone();
            let ev = event(&org, "token_created", Some(t.id), at(5));
            tokio::spawn(
                async move { (t.name.clone(), store.insert_token(&t, &[ev], at(5)).await) },
            )
        })
        .collect();
    let mut created = Vec::new();
    let mut conflicts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (name, Ok(())) => created.push(name),
            (name, Err(StoreError::Conflict(msg))) => conflicts.push((name, msg)),
            (_, Err(e)) => panic!("unexpected error: {e:?}"),
        }
    }

    // Assert
    assert_eq!(created.len(), 42, "created {created:?}");
    assert_eq!(created.iter().filter(|n| *n == "dup").count(), 1);
    assert!(created.contains(&"reused".to_string()));
    assert_eq!(conflicts.len(), 3);
    for (name, msg) in &conflicts {
        assert_eq!(name, "dup");
        assert_eq!(msg, "a live token named \"dup\" already exists in this org");
    }
    let live = store
        .list_tokens(&TokenListQuery {
            state: Some(StateFilter::Active),
            format: None,
            ..tokens_of(&org)
        })
        .await
        .unwrap();
    assert_eq!(live.len(), 42);
    let events = store.list_audit(&audit_of(&org)).await.unwrap();
    let mut audited: Vec<Uuid> = events.iter().filter_map(|e| e.token_id).collect();
    let mut live_ids: Vec<Uuid> = live.iter().map(|t| t.id).collect();
    audited.sort();
    live_ids.sort();
    assert_eq!(
        audited, live_ids,
        "one audit event per created token, none for refused ones"
    );
}

async fn revoking_twice_changes_nothing_the_second_time(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let token = inserted(&store, new_token(&org, "deploy")).await;

    // Act
    let first = store
        .revoke_token(
            token.id,
            at(5),
            &event(&org, "token_revoked", Some(token.id), at(5)),
        )
        .await
        .unwrap();
    let second = store
        .revoke_token(
            token.id,
            at(6),
            &event(&org, "token_revoked", Some(token.id), at(6)),
        )
        .await
        .unwrap();
    let unknown = store
        .revoke_token(
            Uuid::now_v7(),
            at(6),
            &event(&org, "token_revoked", None, at(6)),
        )
        .await
        .unwrap();

    // Assert
    assert!(first);
    assert!(!second);
    assert!(!unknown);
    assert_eq!(get(&store, token.id).await.revoked_at, Some(at(5)));
    let events = store
        .list_audit(&AuditListQuery {
            action: Some("token_revoked".into()),
            ..audit_of(&org)
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].occurred_at, at(5));
}

async fn rotation_replaces_a_live_token_once(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let owner = user_in(&store, &org, "ann@example.com").await;
    let mut old = owned_token(&org, "svc", &owner);
    old.expires_at = Some(at(1_000));
    let old = inserted(&store, old).await;
    // The new token carries its own owner, as the service sets it.
    let mut new = owned_token(&org, "svc", &owner);
    new.family_id = old.family_id;
    new.expires_at = Some(at(2_000));
    let mut soon = new_token(&org, "soon");
    soon.expires_at = Some(at(20));
    let soon = inserted(&store, soon).await;
    let forever = inserted(&store, new_token(&org, "forever")).await;
    let revoked = inserted(&store, new_token(&org, "revoked")).await;
    store
        .revoke_token(
            revoked.id,
            at(2),
            &event(&org, "token_revoked", None, at(2)),
        )
        .await
        .unwrap();
    let taken = inserted(&store, new_token(&org, "taken")).await;
    let rotate = |old: Uuid, new: TokenRecord| {
        let store = store.clone();
        let events = vec![event(&org, "token_rotated", Some(old), at(50))];
        async move {
            store
                .rotate_token(old, at(100), &new, &events, at(50))
                .await
        }
    };
    let successor = |t: &TokenRecord, name: &str| {
        let mut n = new_token(&org, name);
        n.family_id = t.family_id;
        n
    };

    // Act
    let rotated = rotate(old.id, new.clone()).await.unwrap();
    let again = rotate(old.id, successor(&old, "svc again")).await.unwrap();
    let soon_rotated = rotate(soon.id, successor(&soon, "soon")).await.unwrap();
    let forever_rotated = rotate(forever.id, successor(&forever, "forever"))
        .await
        .unwrap();
    let revoked_rotated = rotate(revoked.id, successor(&revoked, "revoked"))
        .await
        .unwrap();
    let clash = rotate(taken.id, new_token(&org, "svc")).await;
    let name_reuse = store
        .insert_token(&new_token(&org, "svc"), &[], at(60))
        .await;

    // Assert
    assert!(rotated);
    let old_now = get(&store, old.id).await;
    assert_eq!(old_now.replaced_by, Some(new.id));
    assert_eq!(old_now.expires_at, Some(at(100)));
    assert_eq!(old_now.revoked_at, None);
    assert_eq!(get(&store, new.id).await, new);
    assert!(!again, "a replaced token rotates once");
    assert!(soon_rotated);
    assert_eq!(
        get(&store, soon.id).await.expires_at,
        Some(at(20)),
        "an earlier expiry is kept"
    );
    assert!(forever_rotated);
    assert_eq!(get(&store, forever.id).await.expires_at, Some(at(100)));
    assert!(!revoked_rotated);
    assert_eq!(get(&store, revoked.id).await.replaced_by, None);
    match clash {
        Err(StoreError::Conflict(m)) => {
            assert_eq!(m, "a live token named \"svc\" already exists in this org");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        get(&store, taken.id).await,
        taken,
        "a failed rotation changes nothing"
    );
    assert_eq!(
        conflict_message(name_reuse),
        "a live token named \"svc\" already exists in this org",
        "the new token holds the name"
    );
    let rotations = store
        .list_audit(&AuditListQuery {
            action: Some("token_rotated".into()),
            ..audit_of(&org)
        })
        .await
        .unwrap();
    assert_eq!(rotations.len(), 3);
}

async fn revoking_a_family_revokes_each_live_member_once(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let first = inserted(&store, new_token(&org, "first")).await;
    let mut second = new_token(&org, "second");
    second.family_id = first.id;
    let second = inserted(&store, second).await;
    let mut gone = new_token(&org, "gone");
    gone.family_id = first.id;
    let gone = inserted(&store, gone).await;
    store
        .revoke_token(gone.id, at(3), &event(&org, "token_revoked", None, at(3)))
        .await
        .unwrap();
    let stranger = inserted(&store, new_token(&org, "stranger")).await;
    let family_event = |secs| event(&org, "family_revoked", Some(first.id), at(secs));

    // Act
    let mut revoked = store
        .revoke_family(first.id, at(10), &family_event(10))
        .await
        .unwrap();
    let again = store
        .revoke_family(first.id, at(11), &family_event(11))
        .await
        .unwrap();

    // Assert
    revoked.sort();
    let mut expected = vec![first.id, second.id];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(again.is_empty());
    assert_eq!(get(&store, first.id).await.revoked_at, Some(at(10)));
    assert_eq!(get(&store, second.id).await.revoked_at, Some(at(10)));
    assert_eq!(get(&store, gone.id).await.revoked_at, Some(at(3)));
    assert_eq!(get(&store, stranger.id).await.revoked_at, None);
    let events = store
        .list_audit(&AuditListQuery {
            action: Some("family_revoked".into()),
            ..audit_of(&org)
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "the event is written by every call");
    inserted(&store, new_token(&org, "first")).await;
}

async fn disabling_and_enabling_change_a_token_once_each(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let token = inserted(&store, new_token(&org, "deploy")).await;
    let set = |when: Option<DateTime<Utc>>| {
        let store = store.clone();
        let action = if when.is_some() {
            "token_disabled"
        } else {
            "token_enabled"
        };
        let e = event(&org, action, Some(token.id), at(7));
        async move { store.set_disabled(token.id, when, &e).await.unwrap() }
    };

    // Act + Assert
    assert!(set(Some(at(5))).await);
    assert!(!set(Some(at(6))).await);
    assert_eq!(get(&store, token.id).await.disabled_at, Some(at(5)));
    assert!(set(None).await);
    assert!(!set(None).await);
    assert_eq!(get(&store, token.id).await.disabled_at, None);
    assert!(
        !store
            .set_disabled(
                Uuid::now_v7(),
                Some(at(5)),
                &event(&org, "token_disabled", None, at(5))
            )
            .await
            .unwrap()
    );
    let actions: Vec<String> = store
        .list_audit(&audit_of(&org))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["token_enabled", "token_disabled"]);
}

async fn audit_events_are_filtered_and_paged_newest_first(store: Arc<dyn Store>) {
    // Arrange: six events at(1)..at(6) for two tokens and two actors, and one in another org.
    let org = new_org("acme");
    let other = new_org("other");
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut events = Vec::new();
    for (i, (action, token, actor)) in [
        ("token_created", Some(a), "bootstrap"),
        ("token_created", Some(b), "token:x"),
        ("token_revoked", Some(a), "token:x"),
        ("org_updated", None, "bootstrap"),
        ("token_rotated", Some(b), "token:y"),
        ("token_revoked", Some(b), "token:x"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = event(&org, action, token, at(i as i64 + 1));
        e.actor = actor.into();
        e.ip = Some(format!("192.0.2.{i}"));
        e.user_agent = Some("curl/8".into());
        e.details = json!({"n": i, "why": "test"});
        events.push(e);
    }
    store.create_org(&org, None, &events).await.unwrap();
    store
        .create_org(
            &other,
            None,
            &[event(&other, "token_created", Some(a), at(3))],
        )
        .await
        .unwrap();
    let list = |q: AuditListQuery| {
        let store = store.clone();
        async move {
            store
                .list_audit(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let id = |n: usize| events[n - 1].id;

    // Act + Assert
    let all = store.list_audit(&audit_of(&org)).await.unwrap();
    let mut newest_first = events.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first);
    assert_eq!(
        list(AuditListQuery {
            token_id: Some(a),
            ..audit_of(&org)
        })
        .await,
        [id(3), id(1)]
    );
    assert_eq!(
        list(AuditListQuery {
            action: Some("token_revoked".into()),
            ..audit_of(&org)
        })
        .await,
        [id(6), id(3)]
    );
    assert_eq!(
        list(AuditListQuery {
            actor: Some("token:x".into()),
            ..audit_of(&org)
        })
        .await,
        [id(6), id(3), id(2)]
    );
    assert_eq!(
        list(AuditListQuery {
            since: Some(at(3)),
            until: Some(at(5)),
            ..audit_of(&org)
        })
        .await,
        [id(4), id(3)],
        "since is inclusive, until exclusive"
    );
    assert_eq!(
        list(AuditListQuery {
            token_id: Some(b),
            action: Some("token_revoked".into()),
            actor: Some("token:x".into()),
            ..audit_of(&org)
        })
        .await,
        [id(6)]
    );
    let page1 = list(AuditListQuery {
        limit: 4,
        ..audit_of(&org)
    })
    .await;
    let page2 = list(AuditListQuery {
        limit: 4,
        before_id: page1.last().copied(),
        ..audit_of(&org)
    })
    .await;
    assert_eq!(page1, [id(6), id(5), id(4), id(3)]);
    assert_eq!(page2, [id(2), id(1)]);
}

async fn usage_from_the_same_address_again_moves_only_its_time_and_a_late_one_moves_nothing_back(
    store: Arc<dyn Store>,
) {
    // Arrange: two addresses known, the newer first.
    let org = org_in(&store, "acme").await;
    let token = inserted(&store, new_token(&org, "busy")).await;
    store
        .add_usage(Arc::from([usage(
            token.id,
            1,
            10,
            vec![ip("192.0.2.1", 10), ip("192.0.2.2", 8)],
        )]))
        .await
        .unwrap();

    // Act: one flush at a time, as a node makes them.
    let mut seen = vec![];
    for (count, secs, from) in [
        // The newest address again, later: only its time moves.
        (2, 20, "192.0.2.1"),
        // The same address at the same instant as the last use: nothing moves back or forth.
        (1, 20, "192.0.2.1"),
        // Late (older than the last use), from the newest address: its time stays.
        (4, 15, "192.0.2.1"),
        // The older address, later: it becomes the newest.
        (8, 30, "192.0.2.2"),
        // The address now second, later again.
        (16, 40, "192.0.2.1"),
    ] {
        store
            .add_usage(Arc::from([usage(
                token.id,
                count,
                secs,
                vec![ip(from, secs)],
            )]))
            .await
            .unwrap();
        let now = get(&store, token.id).await;
        seen.push((now.request_count, now.last_used_at, now.client_ips));
    }

    // Assert
    assert_eq!(
        seen,
        [
            (
                3,
                Some(at(20)),
                vec![ip("192.0.2.1", 20), ip("192.0.2.2", 8)]
            ),
            (
                4,
                Some(at(20)),
                vec![ip("192.0.2.1", 20), ip("192.0.2.2", 8)]
            ),
            (
                8,
                Some(at(20)),
                vec![ip("192.0.2.1", 20), ip("192.0.2.2", 8)]
            ),
            (
                16,
                Some(at(30)),
                vec![ip("192.0.2.2", 30), ip("192.0.2.1", 20)]
            ),
            (
                32,
                Some(at(40)),
                vec![ip("192.0.2.1", 40), ip("192.0.2.2", 30)]
            ),
        ]
    );
}

async fn usage_adds_up_and_keeps_the_latest_use_and_addresses(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let token = inserted(&store, new_token(&org, "busy")).await;
    let idle = inserted(&store, new_token(&org, "idle")).await;

    // Act
    store.add_usage(Arc::from([])).await.unwrap();
    store
        .add_usage(Arc::from([usage(
            token.id,
            3,
            10,
            vec![ip("192.0.2.1", 10)],
        )]))
        .await
        .unwrap();
    store
        .add_usage(Arc::from([
            // Older than what is stored: the count adds up, the times do not go back.
            usage(token.id, 2, 5, vec![ip("192.0.2.2", 5), ip("192.0.2.1", 4)]),
            // A token that is gone: skipped, the rest still counts.
            usage(Uuid::now_v7(), 9, 5, vec![]),
            // The same token twice in one batch: both count.
            usage(token.id, 1, 8, vec![]),
        ]))
        .await
        .unwrap();
    let after_merge = get(&store, token.id).await;
    store
        .add_usage(Arc::from([usage(
            token.id,
            4,
            20,
            vec![
                ip("198.51.100.1", 20),
                ip("198.51.100.2", 20),
                ip("198.51.100.3", 15),
                ip("198.51.100.4", 12),
                ip("198.51.100.5", 1),
            ],
        )]))
        .await
        .unwrap();
    let after_overflow = get(&store, token.id).await;

    // Assert
    assert_eq!(after_merge.request_count, 6);
    assert_eq!(after_merge.last_used_at, Some(at(10)));
    assert_eq!(
        after_merge.client_ips,
        [ip("192.0.2.1", 10), ip("192.0.2.2", 5)]
    );
    assert_eq!(after_overflow.request_count, 10);
    assert_eq!(after_overflow.last_used_at, Some(at(20)));
    assert_eq!(
        after_overflow.client_ips,
        [
            ip("198.51.100.1", 20),
            ip("198.51.100.2", 20),
            ip("198.51.100.3", 15),
            ip("198.51.100.4", 12),
            ip("192.0.2.1", 10),
        ],
        "the five most recent, newest first, ties by address"
    );
    assert_eq!(get(&store, idle.id).await, idle);
}

async fn hourly_counts_add_up_per_hour_and_hours_before_a_cutoff_are_deleted(
    store: Arc<dyn Store>,
) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let token = inserted(&store, new_token(&org, "busy")).await;
    let other = inserted(&store, new_token(&org, "other")).await;
    let hour = |h: i64, count: i64| HourCount {
        hour: at(h * 3600),
        count,
    };
    let mut spread = usage(token.id, 5, 2 * 3600 + 10, vec![]);
    spread.hours = vec![hour(1, 2), hour(2, 3)];

    // Act
    store
        .add_usage(Arc::from([
            usage(token.id, 1, 10, vec![]),
            spread,
            // The same hour twice in one batch, as two flushes' leftovers can be.
            usage(token.id, 4, 2 * 3600 + 20, vec![]),
            usage(other.id, 7, 3 * 3600, vec![]),
            // A token that is gone: no hourly row either.
            usage(Uuid::now_v7(), 9, 10, vec![]),
        ]))
        .await
        .unwrap();
    store
        .add_usage(Arc::from([usage(token.id, 1, 30, vec![])]))
        .await
        .unwrap();
    let all = store.usage_hours(token.id, at(0)).await.unwrap();
    let since_hour_two = store.usage_hours(token.id, at(2 * 3600)).await.unwrap();
    let deleted = store.delete_usage_hours_before(at(2 * 3600)).await.unwrap();
    let kept = store.usage_hours(token.id, at(0)).await.unwrap();

    // Assert
    assert_eq!(all, [hour(0, 2), hour(1, 2), hour(2, 7)]);
    assert_eq!(since_hour_two, [hour(2, 7)]);
    assert_eq!(deleted, 2, "hours 0 and 1 of the busy token");
    assert_eq!(kept, [hour(2, 7)]);
    assert_eq!(
        store.usage_hours(other.id, at(0)).await.unwrap(),
        [hour(3, 7)]
    );
    assert_eq!(get(&store, token.id).await.request_count, 11);
}

async fn hourly_counts_add_up_across_flushes_that_move_to_a_later_hour_and_back(
    store: Arc<dyn Store>,
) {
    // Arrange: flushes one after another, as a node makes them, the third late for hour 0.
    let org = org_in(&store, "acme").await;
    let token = inserted(&store, new_token(&org, "busy")).await;
    let idle = inserted(&store, new_token(&org, "idle")).await;
    let hour = |h: i64, count: i64| HourCount {
        hour: at(h * 3600),
        count,
    };

    // Act
    for delta in [
        usage(token.id, 1, 10, vec![]),
        usage(idle.id, 3, 20, vec![]),
        usage(token.id, 2, 3600 + 10, vec![]),
        usage(token.id, 4, 30, vec![]),
        usage(token.id, 8, 3600 + 20, vec![]),
    ] {
        store.add_usage(Arc::from([delta])).await.unwrap();
    }
    let all = store.usage_hours(token.id, at(0)).await.unwrap();
    let idle_before = store.usage_hours(idle.id, at(0)).await.unwrap();
    let deleted = store.delete_usage_hours_before(at(3600)).await.unwrap();
    let kept = store.usage_hours(token.id, at(0)).await.unwrap();
    let idle_after = store.usage_hours(idle.id, at(0)).await.unwrap();

    // Assert
    assert_eq!(all, [hour(0, 5), hour(1, 10)]);
    assert_eq!(idle_before, [hour(0, 3)]);
    assert_eq!(
        deleted, 2,
        "hour 0 of both tokens, the idle one's last hour too"
    );
    assert_eq!(kept, [hour(1, 10)]);
    assert_eq!(idle_after, []);
    assert_eq!(get(&store, token.id).await.request_count, 15);
}

async fn concurrent_usage_flushes_lose_no_counts(store: Arc<dyn Store>) {
    // Arrange: two tokens flushed by many writers at once, in both orders.
    let org = org_in(&store, "acme").await;
    let a = inserted(&store, new_token(&org, "a")).await;
    let b = inserted(&store, new_token(&org, "b")).await;

    // Act
    let tasks: Vec<_> = (0..20_i64)
        .map(|i| {
            let store = store.clone();
            let (x, y) = if i % 2 == 0 {
                (a.id, b.id)
            } else {
                (b.id, a.id)
            };
            tokio::spawn(async move {
                store
                    .add_usage(Arc::from([
                        usage(x, 1, i, vec![ip(&format!("10.0.0.{i}"), i)]),
                        usage(y, 2, i, vec![]),
                    ]))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    // Assert
    for t in [&a, &b] {
        let read = get(&store, t.id).await;
        assert_eq!(read.request_count, 30);
        assert_eq!(read.last_used_at, Some(at(19)));
        assert_eq!(read.client_ips.len(), 5);
    }
}

/// Whatever one handle changes that a verify cache may hold must reach every other handle's
/// invalidation stream, if the backend has one (shared backends); single-node backends have none.
async fn changes_through_one_handle_are_announced_to_the_others(
    writer: Arc<dyn Store>,
    listener: Arc<dyn Store>,
) {
    // Arrange
    let Some(mut heard) = listener.invalidations().await.unwrap() else {
        return;
    };
    let org = org_in(&writer, "acme").await;
    let t: Vec<TokenRecord> =
        futures_join((0..6).map(|i| inserted(&writer, new_token(&org, &format!("t{i}"))))).await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("an invalidation within 5 s")
            .expect("the stream is open")
    };
    let e = |secs| event(&org, "change", None, at(secs));

    // Act + Assert: each change is announced once it commits; no-ops and failures are not.
    writer.revoke_token(t[0].id, at(5), &e(5)).await.unwrap();
    assert_eq!(next().await, Invalidation::Token(t[0].id));

    writer.revoke_token(t[0].id, at(6), &e(6)).await.unwrap();
    writer
        .set_disabled(t[1].id, Some(at(6)), &e(6))
        .await
        .unwrap();
    assert_eq!(
        next().await,
        Invalidation::Token(t[1].id),
        "a revoke that changed nothing is not announced"
    );
    writer.set_disabled(t[1].id, None, &e(7)).await.unwrap();
    assert_eq!(next().await, Invalidation::Token(t[1].id));

    let clash = new_token(&org, "t3");
    assert!(
        writer
            .rotate_token(t[2].id, at(8), &clash, &[e(8)], at(8))
            .await
            .is_err()
    );
    let mut successor = new_token(&org, "t2");
    successor.family_id = t[2].family_id;
    writer
        .rotate_token(t[2].id, at(8), &successor, &[e(8)], at(8))
        .await
        .unwrap();
    assert_eq!(
        next().await,
        Invalidation::Token(t[2].id),
        "a rotation that rolled back is not announced"
    );
    assert_eq!(next().await, Invalidation::Token(successor.id));

    let mut sibling = new_token(&org, "t4 sibling");
    sibling.family_id = t[4].id;
    writer.insert_token(&sibling, &[], at(9)).await.unwrap();
    let mut family = writer.revoke_family(t[4].id, at(9), &e(9)).await.unwrap();
    let mut announced = vec![next().await, next().await];
    family.sort();
    announced.sort_by_key(|i| match i {
        Invalidation::Token(id) => *id,
        Invalidation::All => Uuid::nil(),
    });
    assert_eq!(
        announced,
        family
            .iter()
            .map(|id| Invalidation::Token(*id))
            .collect::<Vec<_>>()
    );

    writer
        .add_usage(Arc::from([usage(t[5].id, 1, 9, vec![])]))
        .await
        .unwrap();
    writer.revoke_token(t[5].id, at(10), &e(10)).await.unwrap();
    assert_eq!(
        next().await,
        Invalidation::Token(t[5].id),
        "usage is not announced"
    );
}

async fn a_token_created_through_one_handle_is_read_by_another(
    writer: Arc<dyn Store>,
    reader: Arc<dyn Store>,
) {
    // Arrange
    let org = org_in(&writer, "acme").await;
    let token = new_token(&org, "shared");

    // Act
    writer.insert_token(&token, &[], at(1)).await.unwrap();
    let refused = reader
        .insert_token(&new_token(&org, "shared"), &[], at(1))
        .await;

    // Assert
    assert_eq!(get(&reader, token.id).await, token);
    assert!(matches!(refused, Err(StoreError::Conflict(_))));
}

/// Awaits the futures one after another (keeps insertion, and so id, order).
async fn futures_join<T>(futs: impl Iterator<Item = impl Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Opening a database

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_nodes_opening_one_fresh_postgres_database_together_all_succeed() {
    // Arrange
    let admin = postgres_admin_url(module_path!());
    let db = TestDatabase::create(&admin).await;

    // Act: migrations run under sqlx's advisory lock, so the nodes queue instead of racing.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { store::connect(&url).await.map(|_| ()) })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    // Assert
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let store = store::connect(&db.url).await.unwrap();
    assert_eq!(store.org_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_postgres_listener_connection_is_followed_by_a_full_invalidation() {
    // Arrange
    let backend = Backend::postgres(module_path!()).await;
    let mut heard = backend.store.invalidations().await.unwrap().unwrap();
    let org = org_in(&backend.store, "acme").await;
    let token = inserted(&backend.store, new_token(&org, "t")).await;
    let mut conn = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&backend.url).await.unwrap()
    };

    // Act: the server ends the listening session, as a restart or a network cut would.
    let ended = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'latchkey-listener' AND datname = current_database()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await;
    backend
        .store
        .revoke_token(token.id, at(5), &event(&org, "token_revoked", None, at(5)))
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await;

    // Assert
    assert_eq!(ended.len(), 1, "one listening session");
    assert_eq!(first.expect("heard within 10 s"), Some(Invalidation::All));
    assert_eq!(
        second.expect("heard within 5 s"),
        Some(Invalidation::Token(token.id)),
        "listening resumed"
    );
}

/// Ends every session of the store's pool, as a database restart would (not the listener's);
/// returns how many were ended.
async fn end_pooled_connections(url: &str) -> usize {
    let mut conn = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(url).await.unwrap()
    };
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend' AND application_name <> 'latchkey-listener'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_read_outlives_the_database_dropping_every_pooled_connection() {
    // Arrange: connections in the pool, used a moment ago (so not pinged before the next use).
    let backend = Backend::postgres(module_path!()).await;
    let org = org_in(&backend.store, "acme").await;
    let token = inserted(&backend.store, new_token(&org, "t")).await;
    let ids = [token.id];
    let read = || backend.store.get_tokens_for_verify(&ids);
    let warm = tokio::join!(read(), read(), read(), read());
    let warm = [warm.0, warm.1, warm.2, warm.3];
    let ended = end_pooled_connections(&backend.url).await;

    // Act
    let after = read().await;

    // Assert
    assert!(warm.iter().all(Result::is_ok));
    assert!(ended > 0, "the pool's connections were ended");
    let rows = after.expect("read on a new connection");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, token.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_outlives_the_database_dropping_every_pooled_connection() {
    // Arrange: connections in the pool, used a moment ago (so not pinged before the next use).
    let backend = Backend::postgres(module_path!()).await;
    let org = org_in(&backend.store, "acme").await;
    let tokens = [
        new_token(&org, "a"),
        new_token(&org, "b"),
        new_token(&org, "c"),
        new_token(&org, "d"),
    ];
    let store = &backend.store;
    let warm = tokio::join!(
        store.insert_token(&tokens[0], &[], at(1)),
        store.insert_token(&tokens[1], &[], at(1)),
        store.insert_token(&tokens[2], &[], at(1)),
        store.insert_token(&tokens[3], &[], at(1))
    );
    let ended = end_pooled_connections(&backend.url).await;

    // Act
    let revoked = backend
        .store
        .revoke_token(
            tokens[0].id,
            at(5),
            &event(&org, "token_revoked", None, at(5)),
        )
        .await;

    // Assert
    assert!(warm.0.is_ok() && warm.1.is_ok() && warm.2.is_ok() && warm.3.is_ok());
    assert!(ended > 0, "the pool's connections were ended");
    assert!(
        revoked.expect("revoked on a new connection"),
        "this call revoked it"
    );
    assert!(get(&backend.store, tokens[0].id).await.revoked_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_statements_outlive_the_database_dropping_every_pooled_connection() {
    // Arrange: before each call, connections in the pool used a moment ago (so not pinged
    // before the next use), then ended by the database.
    let backend = Backend::postgres(module_path!()).await;
    let store = &backend.store;
    let org = org_in(store, "acme").await;
    let token = inserted(store, new_token(&org, "t")).await;
    let drop_warm_connections = || async {
        let warm = tokio::join!(
            store.get_token(token.id),
            store.get_token(token.id),
            store.get_token(token.id),
            store.get_token(token.id)
        );
        assert!(warm.0.is_ok() && warm.1.is_ok() && warm.2.is_ok() && warm.3.is_ok());
        end_pooled_connections(&backend.url).await
    };

    // Act: a read by id, a query made by a builder, and the readiness ping.
    let ended_before_get = drop_warm_connections().await;
    let got = store.get_token(token.id).await;
    let ended_before_list = drop_warm_connections().await;
    let listed = store.list_tokens(&tokens_of(&org)).await;
    let ended_before_ping = drop_warm_connections().await;
    let pinged = store.ping().await;

    // Assert
    assert!(ended_before_get > 0 && ended_before_list > 0 && ended_before_ping > 0);
    assert_eq!(
        got.expect("read on a new connection").map(|t| t.id),
        Some(token.id)
    );
    let listed = listed.expect("listed on a new connection");
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [token.id]);
    pinged.expect("pinged on a new connection");
}

#[tokio::test]
async fn an_unknown_database_url_scheme_is_refused() {
    // Act
    let res = store::connect("mysql://localhost/latchkey").await;

    // Assert
    let err = res.err().expect("refused").to_string();
    assert!(err.contains("unsupported database URL scheme"), "{err}");
}

async fn a_usage_flush_of_thousands_of_tokens_counts_each_one(store: Arc<dyn Store>) {
    // Arrange: 1,500 ids that do not exist (a backend may split a flush into statements of a
    // thousand), then two real tokens, whose ids sort after all of them.
    let org = org_in(&store, "acme").await;
    let gone: Vec<Uuid> = (0..1_500).map(|_| Uuid::now_v7()).collect();
    let first = inserted(&store, new_token(&org, "first")).await;
    let second = inserted(&store, new_token(&org, "second")).await;
    let mut batch: Vec<UsageDelta> = gone.iter().map(|id| usage(*id, 1, 5, vec![])).collect();
    batch.push(usage(first.id, 2, 6, vec![ip("192.0.2.1", 6)]));
    batch.push(usage(second.id, 3, 7, vec![]));

    // Act
    store.add_usage(batch.into()).await.unwrap();

    // Assert
    let first = get(&store, first.id).await;
    let second = get(&store, second.id).await;
    assert_eq!((first.request_count, second.request_count), (2, 3));
    assert_eq!(first.client_ips, [ip("192.0.2.1", 6)]);
    assert_eq!(second.last_used_at, Some(at(7)));
}

async fn the_verify_read_returns_the_verify_columns_of_the_ids_that_exist(store: Arc<dyn Store>) {
    // Arrange: a live token of a user with an expiry, a revoked one, a disabled service token.
    let org = org_in(&store, "acme").await;
    let owner = user_in(&store, &org, "ann@example.com").await;
    let mut live = owned_token(&org, "live", &owner);
    live.expires_at = Some(at(500));
    let live = inserted(&store, live).await;
    let revoked = inserted(&store, new_token(&org, "revoked")).await;
    store
        .revoke_token(
            revoked.id,
            at(2),
            &event(&org, "token_revoked", Some(revoked.id), at(2)),
        )
        .await
        .unwrap();
    let mut disabled = new_token(&org, "disabled");
    disabled.kind = TokenKind::Svc;
    let disabled = inserted(&store, disabled).await;
    store
        .set_disabled(
            disabled.id,
            Some(at(3)),
            &event(&org, "token_disabled", Some(disabled.id), at(3)),
        )
        .await
        .unwrap();

    // Act
    let mut rows = store
        .get_tokens_for_verify(&[Uuid::now_v7(), disabled.id, live.id, revoked.id])
        .await
        .unwrap();
    let none = store.get_tokens_for_verify(&[]).await.unwrap();

    // Assert
    rows.sort_by_key(|r| r.id);
    let expect = |t: &TokenRecord, blocked: bool| VerifyRecord {
        id: t.id,
        org_id: t.org_id,
        kind: t.kind,
        verifier: t.verifier.clone(),
        permissions: t.permissions,
        expires_at: t.expires_at,
        blocked,
        user_id: t.user_id,
    };
    assert_eq!(
        rows,
        [
            expect(&live, false),
            expect(&revoked, true),
            expect(&disabled, true)
        ]
    );
    assert!(none.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Owners, users and sessions

async fn tokens_are_filtered_by_visibility_and_owner(store: Arc<dyn Store>) {
    // Arrange: "token:me" acts for Ann; Bob is another user of the org.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let mut by_me = new_token(&org, "by me");
    by_me.created_by = "token:me".into();
    let by_me = inserted(&store, by_me).await;
    let anns = inserted(&store, owned_token(&org, "ann's", &ann)).await;
    let bobs = inserted(&store, owned_token(&org, "bob's", &bob)).await;
    let machine = inserted(&store, new_token(&org, "machine")).await;
    let mut by_me_for_bob = owned_token(&org, "by me for bob", &bob);
    by_me_for_bob.created_by = "token:me".into();
    let by_me_for_bob = inserted(&store, by_me_for_bob).await;
    let list = |visible_to: Option<(&str, Option<Uuid>)>, owner: Option<Uuid>| {
        let store = store.clone();
        let q = TokenListQuery {
            visible_to: visible_to.map(|(actor, user_id)| Visibility {
                actor: actor.to_string(),
                user_id,
            }),
            owner,
            ..tokens_of(&org)
        };
        async move { ids(&store.list_tokens(&q).await.unwrap()) }
    };

    // Act + Assert
    assert_eq!(
        list(None, None).await,
        [by_me_for_bob.id, machine.id, bobs.id, anns.id, by_me.id]
    );
    assert_eq!(
        list(Some(("token:me", Some(ann.id))), None).await,
        [by_me_for_bob.id, anns.id, by_me.id],
        "created by the actor or owned by its user"
    );
    assert_eq!(
        list(Some(("token:me", None)), None).await,
        [by_me_for_bob.id, by_me.id],
        "created by the actor only"
    );
    assert_eq!(list(None, Some(ann.id)).await, [anns.id]);
    assert_eq!(list(None, Some(bob.id)).await, [by_me_for_bob.id, bobs.id]);
    assert_eq!(
        list(Some(("token:me", Some(ann.id))), Some(bob.id)).await,
        [by_me_for_bob.id]
    );
    assert!(list(None, Some(Uuid::now_v7())).await.is_empty());
}

async fn audit_events_are_written_on_their_own(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let mut failed = event(&org, "login_failed", None, at(5));
    failed.ip = Some("192.0.2.9".into());
    failed.details = json!({"reason": "invalid_credentials"});
    let second = event(&org, "login_failed", None, at(6));

    // Act
    store.insert_audit(&[]).await.unwrap();
    store
        .insert_audit(&[failed.clone(), second.clone()])
        .await
        .unwrap();

    // Assert
    assert_eq!(
        store.list_audit(&audit_of(&org)).await.unwrap(),
        [second, failed]
    );
}

async fn a_user_round_trips_and_its_email_is_unique_in_any_case_across_orgs(store: Arc<dyn Store>) {
    // Arrange: a user with every optional field set, times with sub-microsecond parts.
    let org = org_in(&store, "acme").await;
    let other = org_in(&store, "other").await;
    let nanos = TimeDelta::nanoseconds(123_456_789);
    let mut ann = new_user(&org, "Ann.Lee@Example.com");
    ann.role = Role::Admin;
    ann.platform_admin = true;
    ann.password_hash = None;
    ann.created_at = at(1) + nanos;
    ann.last_login_at = Some(at(2) + nanos);
    ann.disabled_at = Some(at(3) + nanos);
    ann.setup_hash = Some("ab".repeat(32));
    ann.setup_expires_at = Some(at(86_400) + nanos);
    let same_org = new_user(&org, "ann.lee@example.COM");
    let other_org = new_user(&other, "ANN.LEE@EXAMPLE.COM");

    // Act
    store
        .insert_user(&ann, &[event(&org, "user_created", None, at(1))])
        .await
        .unwrap();
    let in_same_org = store
        .insert_user(&same_org, &[event(&org, "user_created", None, at(2))])
        .await;
    let in_other_org = store
        .insert_user(&other_org, &[event(&other, "user_created", None, at(2))])
        .await;

    // Assert
    let micros = TimeDelta::microseconds(123_456);
    let mut expected = ann.clone();
    expected.created_at = at(1) + micros;
    expected.last_login_at = Some(at(2) + micros);
    expected.disabled_at = Some(at(3) + micros);
    expected.setup_expires_at = Some(at(86_400) + micros);
    assert_eq!(user(&store, ann.id).await, expected);
    assert_eq!(store.get_user(Uuid::now_v7()).await.unwrap(), None);
    for refused in [in_same_org, in_other_org] {
        assert_eq!(
            conflict_message(refused),
            "a user with this email already exists"
        );
    }
    assert_eq!(store.get_user(same_org.id).await.unwrap(), None);
    assert_eq!(store.get_user(other_org.id).await.unwrap(), None);
    assert_eq!(events_named(&store, &org, "user_created").await.len(), 1);
    assert!(
        events_named(&store, &other, "user_created")
            .await
            .is_empty(),
        "a refused insert writes no event"
    );
}

async fn a_user_is_found_by_email_in_another_case_and_by_its_setup_hash(store: Arc<dyn Store>) {
    // Arrange: an invited user (a setup link, no password yet) and one with a non-ASCII email.
    let org = org_in(&store, "acme").await;
    let mut invited = new_user(&org, "Ann@Example.com");
    invited.password_hash = None;
    invited.setup_hash = Some("cd".repeat(32));
    invited.setup_expires_at = Some(at(86_400));
    store.insert_user(&invited, &[]).await.unwrap();
    let ulla = user_in(&store, &org, "ülla@example.com").await;

    // Act
    let by_email = store.find_user_by_email("ann@EXAMPLE.COM").await.unwrap();
    let by_unicode_email = store.find_user_by_email("ÜLLA@example.com").await.unwrap();
    let unknown_email = store.find_user_by_email("bob@example.com").await.unwrap();
    let by_hash = store
        .find_user_by_setup_hash(&"cd".repeat(32))
        .await
        .unwrap();
    let unknown_hash = store
        .find_user_by_setup_hash(&"ef".repeat(32))
        .await
        .unwrap();
    let mut activated = invited.clone();
    activated.password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3".into());
    activated.setup_hash = None;
    activated.setup_expires_at = None;
    store
        .update_user(&activated, row_only(), at(5), &[])
        .await
        .unwrap();
    let after_use = store
        .find_user_by_setup_hash(&"cd".repeat(32))
        .await
        .unwrap();

    // Assert
    assert_eq!(by_email, Some(invited.clone()));
    assert_eq!(by_unicode_email, Some(ulla));
    assert_eq!(unknown_email, None);
    assert_eq!(by_hash, Some(invited));
    assert_eq!(unknown_hash, None);
    assert_eq!(after_use, None, "a setup link works once");
}

async fn users_are_listed_newest_first_and_paged_by_an_id_cursor(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let other = org_in(&store, "other").await;
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(user_in(&store, &org, &format!("u{i}@example.com")).await);
    }
    user_in(&store, &other, "elsewhere@example.com").await;
    let page = |before_id: Option<Uuid>| {
        let store = store.clone();
        let q = UserListQuery {
            org_id: org.id,
            before_id,
            limit: 2,
        };
        async move {
            store
                .list_users(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.id)
                .collect::<Vec<_>>()
        }
    };

    // Act
    let first = page(None).await;
    let second = page(first.last().copied()).await;
    let third = page(second.last().copied()).await;
    let fourth = page(third.last().copied()).await;

    // Assert
    let id = |i: usize| users[i].id;
    assert_eq!(first, [id(4), id(3)]);
    assert_eq!(second, [id(2), id(1)]);
    assert_eq!(third, [id(0)]);
    assert!(fourth.is_empty());
}

async fn active_admins_are_counted_per_org_leaving_out_members_and_disabled_ones(
    store: Arc<dyn Store>,
) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let other = org_in(&store, "other").await;
    for (o, email, role, disabled) in [
        (&org, "admin@acme.test", Role::Admin, false),
        (&org, "gone@acme.test", Role::Admin, true),
        (&org, "member@acme.test", Role::Member, false),
        (&other, "admin@other.test", Role::Admin, false),
        (&other, "admin2@other.test", Role::Admin, false),
    ] {
        let mut u = new_user(o, email);
        u.role = role;
        u.disabled_at = disabled.then(|| at(2));
        store.insert_user(&u, &[]).await.unwrap();
    }
    let before = store.count_active_admins(org.id).await.unwrap();
    let mut promoted = store
        .find_user_by_email("member@acme.test")
        .await
        .unwrap()
        .unwrap();
    promoted.role = Role::Admin;

    // Act
    store
        .update_user(&promoted, row_only(), at(3), &[])
        .await
        .unwrap();

    // Assert
    assert_eq!(before, 1);
    assert_eq!(store.count_active_admins(org.id).await.unwrap(), 2);
    assert_eq!(store.count_active_admins(other.id).await.unwrap(), 2);
    assert_eq!(store.count_active_admins(Uuid::now_v7()).await.unwrap(), 0);
}

async fn a_user_update_replaces_every_field_it_may_change_and_writes_its_events(
    store: Arc<dyn Store>,
) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let mut changed = ann.clone();
    changed.email = "Ann.Lee@Example.org".into();
    changed.name = "Ann Lee-Smith".into();
    changed.role = Role::Admin;
    changed.platform_admin = true;
    changed.password_hash = None;
    changed.last_login_at = Some(at(4));
    changed.disabled_at = Some(at(5));
    changed.setup_hash = Some("12".repeat(32));
    changed.setup_expires_at = Some(at(90_000));
    let updated = event(&org, "user_updated", None, at(5));

    // Act
    let revoked = store
        .update_user(&changed, row_only(), at(5), std::slice::from_ref(&updated))
        .await
        .unwrap();
    let mut restored = changed.clone();
    restored.email = "ann@example.com".into();
    restored.platform_admin = false;
    restored.last_login_at = None;
    restored.disabled_at = None;
    restored.setup_hash = None;
    restored.setup_expires_at = None;
    store
        .update_user(&restored, row_only(), at(6), &[])
        .await
        .unwrap();
    let after_restore = user(&store, ann.id).await;

    // Assert
    assert!(revoked.is_empty());
    assert_eq!(after_restore, restored, "every field can be cleared again");
    assert_eq!(
        store
            .find_user_by_email("ANN@example.com")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(ann.id)
    );
    assert_eq!(
        store
            .find_user_by_email("ann.lee@example.org")
            .await
            .unwrap(),
        None,
        "the old email key went with the old email"
    );
    assert_eq!(events_named(&store, &org, "user_updated").await, [updated]);
    store
        .update_user(&changed, row_only(), at(7), &[])
        .await
        .unwrap();
    assert_eq!(user(&store, ann.id).await, changed);
}

async fn an_update_to_a_taken_email_is_a_conflict_and_changes_nothing(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let token = inserted(&store, owned_token(&org, "bob's", &bob)).await;
    let session = session_of(&store, &bob, 10).await;
    let mut taking = bob.clone();
    taking.email = "ANN@example.com".into();
    taking.disabled_at = Some(at(20));
    let revoked_event = event(&org, "token_revoked", None, at(20));
    let logout = event(&org, "logout", None, at(20));

    // Act
    let res = store
        .update_user(
            &taking,
            UserChange {
                revoke: RevokeOwned::All,
                end_sessions: EndSessions::All,
                revoke_event: Some(&revoked_event),
                session_event: Some(&logout),
            },
            at(20),
            &[event(&org, "user_disabled", None, at(20))],
        )
        .await;

    // Assert
    assert_eq!(
        conflict_message(res),
        "a user with this email already exists"
    );
    let mut unchanged = bob.clone();
    unchanged.last_login_at = Some(at(10));
    assert_eq!(user(&store, bob.id).await, unchanged);
    assert_eq!(get(&store, token.id).await.revoked_at, None);
    assert_eq!(store.list_sessions(bob.id).await.unwrap(), [session]);
    assert!(store.list_audit(&audit_of(&org)).await.unwrap().is_empty());
}

async fn disabling_a_user_revokes_each_live_token_it_owns_with_an_event_each(
    store: Arc<dyn Store>,
) {
    // Arrange: Ann owns a live token, a disabled one and a revoked one; Bob and a machine own
    // the rest, one of them created by the same actor.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let live = inserted(&store, owned_token(&org, "live", &ann)).await;
    let mut disabled = owned_token(&org, "disabled", &ann);
    disabled.disabled_at = Some(at(1));
    let disabled = inserted(&store, disabled).await;
    let revoked = inserted(&store, owned_token(&org, "revoked", &ann)).await;
    store
        .revoke_token(
            revoked.id,
            at(2),
            &event(&org, "token_revoked", None, at(2)),
        )
        .await
        .unwrap();
    let bobs = inserted(&store, owned_token(&org, "bob's", &bob)).await;
    let mut machine = new_token(&org, "machine");
    machine.created_by = live.created_by.clone();
    let machine = inserted(&store, machine).await;
    let mut off = ann.clone();
    off.disabled_at = Some(at(10));
    let mut template = event(&org, "token_revoked", None, at(10));
    template.details = json!({"reason": "user_disabled"});

    // Act
    let returned = store
        .update_user(
            &off,
            UserChange {
                revoke: RevokeOwned::All,
                end_sessions: EndSessions::None,
                revoke_event: Some(&template),
                session_event: None,
            },
            at(10),
            &[event(&org, "user_disabled", None, at(10))],
        )
        .await
        .unwrap();
    let name_reused = store
        .insert_token(&new_token(&org, "live"), &[], at(11))
        .await;

    // Assert
    assert_eq!(sorted(returned), sorted(vec![live.id, disabled.id]));
    assert_eq!(get(&store, live.id).await.revoked_at, Some(at(10)));
    assert_eq!(get(&store, disabled.id).await.revoked_at, Some(at(10)));
    assert_eq!(
        get(&store, revoked.id).await.revoked_at,
        Some(at(2)),
        "a revoked token stays revoked when it was"
    );
    assert_eq!(get(&store, bobs.id).await.revoked_at, None);
    assert_eq!(get(&store, machine.id).await.revoked_at, None);
    name_reused.expect("a revoked token's name is free again");
    assert_eq!(user(&store, ann.id).await.disabled_at, Some(at(10)));
    let written: Vec<AuditRecord> = events_named(&store, &org, "token_revoked")
        .await
        .into_iter()
        .filter(|e| e.occurred_at == at(10))
        .collect();
    assert_eq!(
        sorted(written.iter().filter_map(|e| e.token_id).collect()),
        sorted(vec![live.id, disabled.id])
    );
    for e in &written {
        assert_ne!(e.id, template.id, "each event gets its own id");
        assert_eq!(
            AuditRecord {
                id: template.id,
                token_id: None,
                ..e.clone()
            },
            template
        );
    }
    assert_eq!(events_named(&store, &org, "user_disabled").await.len(), 1);
}

async fn a_demotion_revokes_only_the_live_owned_tokens_holding_a_bit_outside_the_new_set(
    store: Arc<dyn Store>,
) {
    // Arrange: the new role allows bits 0-2.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let allowed = Permissions::from_bits(0b111);
    let token = |name: &str, owner: &UserRecord, bits: u64| {
        let mut t = owned_token(&org, name, owner);
        t.permissions = Permissions::from_bits(bits);
        t
    };
    let within = inserted(&store, token("within", &ann, 0b101)).await;
    let exactly = inserted(&store, token("exactly", &ann, 0b111)).await;
    let beyond = inserted(&store, token("beyond", &ann, 0b1001)).await;
    // Bit 63: stored as a negative number, still outside the set.
    let top_bit = inserted(&store, token("top bit", &ann, (1 << 63) | 1)).await;
    let revoked = inserted(&store, token("revoked", &ann, 0b1000)).await;
    store
        .revoke_token(
            revoked.id,
            at(2),
            &event(&org, "token_revoked", None, at(2)),
        )
        .await
        .unwrap();
    let bobs = inserted(&store, token("bob's", &bob, 0b1000)).await;
    let template = event(&org, "token_revoked", None, at(10));

    // Act
    let returned = store
        .update_user(
            &ann,
            UserChange {
                revoke: RevokeOwned::Exceeding(allowed),
                end_sessions: EndSessions::None,
                revoke_event: Some(&template),
                session_event: None,
            },
            at(10),
            &[],
        )
        .await
        .unwrap();

    // Assert
    assert_eq!(sorted(returned), sorted(vec![beyond.id, top_bit.id]));
    for t in [&within, &exactly, &bobs] {
        assert_eq!(get(&store, t.id).await.revoked_at, None, "{}", t.name);
    }
    assert_eq!(get(&store, beyond.id).await.revoked_at, Some(at(10)));
    assert_eq!(get(&store, top_bit.id).await.revoked_at, Some(at(10)));
    assert_eq!(get(&store, revoked.id).await.revoked_at, Some(at(2)));
    let audited: Vec<Uuid> = events_named(&store, &org, "token_revoked")
        .await
        .into_iter()
        .filter(|e| e.occurred_at == at(10))
        .filter_map(|e| e.token_id)
        .collect();
    assert_eq!(sorted(audited), sorted(vec![beyond.id, top_bit.id]));
}

/// Disables `user` at `at(secs)`, revoking its live tokens. Returns the ids revoked.
async fn disable(store: &Arc<dyn Store>, user: &UserRecord, secs: i64) -> Vec<Uuid> {
    let mut off = user.clone();
    off.disabled_at = Some(at(secs));
    store
        .update_user(
            &off,
            UserChange {
                revoke: RevokeOwned::All,
                ..row_only()
            },
            at(secs),
            &[],
        )
        .await
        .unwrap()
}

fn is_owner_disabled<T: std::fmt::Debug>(res: &Result<T, StoreError>) -> bool {
    matches!(res, Err(StoreError::OwnerDisabled))
}

/// The ids of the org's events that name a token.
async fn audited_tokens(store: &Arc<dyn Store>, org: &OrgRecord) -> Vec<Uuid> {
    let events = store.list_audit(&audit_of(org)).await.unwrap();
    sorted(events.iter().filter_map(|e| e.token_id).collect())
}

async fn a_token_owned_by_a_disabled_or_missing_user_is_refused_and_writes_nothing(
    store: Arc<dyn Store>,
) {
    // Arrange: Ann is active, Bob was disabled, and the third owner does not exist.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    disable(&store, &bob, 5).await;
    let anns = owned_token(&org, "ann's", &ann);
    let bobs = owned_token(&org, "bob's", &bob);
    let mut ghosts = new_token(&org, "ghost's");
    ghosts.user_id = Some(Uuid::now_v7());
    let machine = new_token(&org, "machine");
    let mint = |t: &TokenRecord| {
        let store = store.clone();
        let t = t.clone();
        let ev = event(&org, "token_created", Some(t.id), at(6));
        async move { store.insert_token(&t, &[ev], at(6)).await }
    };

    // Act
    let for_bob = mint(&bobs).await;
    let for_ghost = mint(&ghosts).await;
    let for_ann = mint(&anns).await;
    let for_machine = mint(&machine).await;
    let mut on = user(&store, bob.id).await;
    on.disabled_at = None;
    store
        .update_user(&on, row_only(), at(7), &[])
        .await
        .unwrap();
    let mut bobs_again = owned_token(&org, "bob's", &bob);
    bobs_again.created_at = at(8);
    let after_enable = store.insert_token(&bobs_again, &[], at(8)).await;

    // Assert
    assert!(is_owner_disabled(&for_bob), "{for_bob:?}");
    assert!(is_owner_disabled(&for_ghost), "{for_ghost:?}");
    for_ann.expect("an active owner's token inserts");
    for_machine.expect("a token without an owner inserts");
    after_enable.expect("an enabled owner's token inserts");
    assert_eq!(store.get_token(bobs.id).await.unwrap(), None);
    assert_eq!(store.get_token(ghosts.id).await.unwrap(), None);
    assert_eq!(get(&store, anns.id).await, anns);
    assert_eq!(
        audited_tokens(&store, &org).await,
        sorted(vec![anns.id, machine.id]),
        "no event for a refused insert"
    );
    assert_eq!(
        ids(&store.list_tokens(&tokens_of(&org)).await.unwrap()),
        [bobs_again.id, machine.id, anns.id]
    );
}

async fn rotating_a_token_of_a_disabled_user_is_refused_and_changes_nothing(store: Arc<dyn Store>) {
    // Arrange: Ann was disabled without her token being revoked (the state a mint racing the
    // disable would see); Bob's disable revoked his token; Carol is active.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let carol = user_in(&store, &org, "carol@example.com").await;
    let anns = inserted(&store, owned_token(&org, "ann's", &ann)).await;
    let bobs = inserted(&store, owned_token(&org, "bob's", &bob)).await;
    let carols = inserted(&store, owned_token(&org, "carol's", &carol)).await;
    let mut off = ann.clone();
    off.disabled_at = Some(at(5));
    store
        .update_user(&off, row_only(), at(5), &[])
        .await
        .unwrap();
    disable(&store, &bob, 5).await;
    let bobs = get(&store, bobs.id).await;
    let successor = |old: &TokenRecord, owner: &UserRecord| {
        let mut t = owned_token(&org, &old.name, owner);
        t.family_id = old.family_id;
        t.created_at = at(6);
        t
    };
    let rotate = |old: &TokenRecord, new: &TokenRecord| {
        let store = store.clone();
        let (old_id, new) = (old.id, new.clone());
        let events = [
            event(&org, "token_rotated", Some(old_id), at(6)),
            event(&org, "token_created", Some(new.id), at(6)),
        ];
        async move {
            store
                .rotate_token(old_id, at(66), &new, &events, at(6))
                .await
        }
    };
    let (new_ann, new_bob, new_carol) = (
        successor(&anns, &ann),
        successor(&bobs, &bob),
        successor(&carols, &carol),
    );

    // Act
    let of_ann = rotate(&anns, &new_ann).await;
    let of_bob = rotate(&bobs, &new_bob).await;
    let of_carol = rotate(&carols, &new_carol).await;

    // Assert
    assert!(is_owner_disabled(&of_ann), "{of_ann:?}");
    assert!(
        is_owner_disabled(&of_bob),
        "the owner is checked before the old token: {of_bob:?}"
    );
    assert!(of_carol.unwrap(), "an active owner's token rotates");
    assert_eq!(
        get(&store, anns.id).await,
        anns,
        "the old token is unchanged"
    );
    assert_eq!(get(&store, bobs.id).await, bobs);
    assert_eq!(store.get_token(new_ann.id).await.unwrap(), None);
    assert_eq!(store.get_token(new_bob.id).await.unwrap(), None);
    assert_eq!(get(&store, carols.id).await.replaced_by, Some(new_carol.id));
    assert_eq!(
        audited_tokens(&store, &org).await,
        sorted(vec![carols.id, new_carol.id]),
        "no event for a refused rotation"
    );
}

async fn concurrent_inserts_with_a_disabled_owner_among_them_each_get_their_own_answer(
    store: Arc<dyn Store>,
) {
    // Arrange: inserts for an active owner, a disabled one, a missing one and no owner, polled
    // together (on SQLite, queued behind a usage flush, so they commit as one group that the
    // disabled owner fails and then one by one).
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    disable(&store, &bob, 5).await;
    let mut ghosts = new_token(&org, "ghost's");
    ghosts.user_id = Some(Uuid::now_v7());
    let tokens = [
        owned_token(&org, "ann's 1", &ann),
        owned_token(&org, "bob's", &bob),
        new_token(&org, "machine 1"),
        owned_token(&org, "ann's 2", &ann),
        ghosts,
        new_token(&org, "machine 2"),
    ];
    let events: Vec<AuditRecord> = tokens
        .iter()
        .map(|t| event(&org, "token_created", Some(t.id), at(6)))
        .collect();
    let flush: Arc<[UsageDelta]> = (0..2_000)
        .map(|_| usage(Uuid::now_v7(), 1, 6, vec![]))
        .collect();
    let mint = |i: usize| store.insert_token(&tokens[i], &events[i..=i], at(6));

    // Act
    let (flushed, a1, b, m1, a2, g, m2) = tokio::join!(
        store.add_usage(flush),
        mint(0),
        mint(1),
        mint(2),
        mint(3),
        mint(4),
        mint(5),
    );

    // Assert
    flushed.unwrap();
    for (i, res) in [a1, m1, a2, m2].into_iter().enumerate() {
        res.unwrap_or_else(|e| panic!("insert {i} was refused: {e:?}"));
    }
    assert!(is_owner_disabled(&b), "{b:?}");
    assert!(is_owner_disabled(&g), "{g:?}");
    let written = [&tokens[0], &tokens[2], &tokens[3], &tokens[5]];
    for t in written {
        assert_eq!(&get(&store, t.id).await, t);
    }
    assert_eq!(store.get_token(tokens[1].id).await.unwrap(), None);
    assert_eq!(store.get_token(tokens[4].id).await.unwrap(), None);
    assert_eq!(
        audited_tokens(&store, &org).await,
        sorted(written.iter().map(|t| t.id).collect()),
        "one event per inserted token, none for refused ones"
    );
}

async fn mints_racing_the_disable_of_their_owner_leave_none_of_its_tokens_live(
    store: Arc<dyn Store>,
) {
    // Arrange: a stream of mints for Ann, with her disable started in the middle of it.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let candidates: Vec<TokenRecord> = (0..24)
        .map(|i| owned_token(&org, &format!("t{i}"), &ann))
        .collect();

    // Act
    let mut mints = Vec::new();
    let mut disabling = None;
    for (i, t) in candidates.iter().cloned().enumerate() {
        if i == candidates.len() / 2 {
            let (store, ann) = (store.clone(), ann.clone());
            disabling = Some(tokio::spawn(async move { disable(&store, &ann, 10).await }));
        }
        let store = store.clone();
        let ev = event(&org, "token_created", Some(t.id), at(9));
        mints.push(tokio::spawn(async move {
            (t.id, store.insert_token(&t, &[ev], at(9)).await)
        }));
    }
    let revoked = disabling.unwrap().await.unwrap();
    let mut created = Vec::new();
    for mint in mints {
        match mint.await.unwrap() {
            (id, Ok(())) => created.push(id),
            (id, res) => assert!(is_owner_disabled(&res), "{id}: {res:?}"),
        }
    }

    // Assert: every token that was inserted was revoked by the disable.
    let live = store
        .list_tokens(&TokenListQuery {
            owner: Some(ann.id),
            name_contains: None,
            state: Some(StateFilter::Active),
            ..tokens_of(&org)
        })
        .await
        .unwrap();
    assert!(live.is_empty(), "live tokens of a disabled user: {live:?}");
    assert_eq!(sorted(revoked), sorted(created.clone()));
    assert_eq!(audited_tokens(&store, &org).await, sorted(created));
}

async fn a_user_update_ends_the_sessions_it_names_with_an_event_each(store: Arc<dyn Store>) {
    // Arrange: a password change keeps the session it was made in.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let old = session_of(&store, &ann, 10).await;
    let older = session_of(&store, &ann, 5).await;
    let current = session_of(&store, &ann, 20).await;
    let bobs = session_of(&store, &bob, 10).await;
    let mut changed = user(&store, ann.id).await;
    changed.password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$b3RoZXI$b3RoZXI".into());
    let mut template = event(&org, "logout", None, at(30));
    template.details = json!({"reason": "password_changed"});

    // Act
    let revoked = store
        .update_user(
            &changed,
            UserChange {
                revoke: RevokeOwned::None,
                end_sessions: EndSessions::AllBut(current.id),
                revoke_event: None,
                session_event: Some(&template),
            },
            at(30),
            &[event(&org, "password_changed", None, at(30))],
        )
        .await
        .unwrap();

    // Assert
    assert!(revoked.is_empty());
    assert_eq!(user(&store, ann.id).await, changed);
    assert_eq!(store.list_sessions(ann.id).await.unwrap(), [current]);
    assert_eq!(store.list_sessions(bob.id).await.unwrap(), [bobs]);
    let logouts = events_named(&store, &org, "logout").await;
    let mut ended: Vec<String> = logouts
        .iter()
        .map(|e| e.details["session_id"].as_str().unwrap().to_string())
        .collect();
    ended.sort();
    let mut expected = vec![old.id.to_string(), older.id.to_string()];
    expected.sort();
    assert_eq!(ended, expected);
    for e in &logouts {
        assert_ne!(e.id, template.id);
        assert_eq!(e.details["reason"], "password_changed", "details are kept");
        assert_eq!((e.action.as_str(), e.token_id), ("logout", None));
    }
    assert_eq!(
        events_named(&store, &org, "password_changed").await.len(),
        1
    );
}

async fn ending_sessions_deletes_only_the_ones_named_with_an_event_each(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let first = session_of(&store, &ann, 10).await;
    let second = session_of(&store, &ann, 11).await;
    let third = session_of(&store, &ann, 12).await;
    let bobs = session_of(&store, &bob, 13).await;
    let logout = event(&org, "logout", None, at(20));

    // Act
    let none = store
        .end_sessions(ann.id, EndSessions::None, Some(&logout))
        .await
        .unwrap();
    let one = store
        .end_sessions(ann.id, EndSessions::One(second.id), Some(&logout))
        .await
        .unwrap();
    let again = store
        .end_sessions(ann.id, EndSessions::One(second.id), Some(&logout))
        .await
        .unwrap();
    let someone_elses = store
        .end_sessions(ann.id, EndSessions::One(bobs.id), Some(&logout))
        .await
        .unwrap();
    let after_one = store.list_sessions(ann.id).await.unwrap();
    let all_but = store
        .end_sessions(ann.id, EndSessions::AllBut(third.id), None)
        .await
        .unwrap();
    let after_all_but = store.list_sessions(ann.id).await.unwrap();
    let all = store
        .end_sessions(ann.id, EndSessions::All, Some(&logout))
        .await
        .unwrap();

    // Assert
    assert_eq!((none, one, again, someone_elses), (0, 1, 0, 0));
    assert_eq!(after_one, [third.clone(), first]);
    assert_eq!(all_but, 1);
    assert_eq!(after_all_but, std::slice::from_ref(&third));
    assert_eq!(all, 1);
    assert!(store.list_sessions(ann.id).await.unwrap().is_empty());
    assert_eq!(store.list_sessions(bob.id).await.unwrap(), [bobs]);
    let ended: Vec<String> = events_named(&store, &org, "logout")
        .await
        .iter()
        .map(|e| e.details["session_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ended,
        [third.id.to_string(), second.id.to_string()],
        "one event per session ended with an event, newest first"
    );
}

async fn a_new_session_records_the_sign_in_and_is_found_by_its_secret_hash(store: Arc<dyn Store>) {
    // Arrange
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let earlier = session_of(&store, &ann, 50).await;
    let session = new_session(&ann, 100);
    let login = event(&org, "login_succeeded", None, at(100));

    // Act
    store
        .insert_session(&session, std::slice::from_ref(&login))
        .await
        .unwrap();
    let signed_in = user(&store, ann.id).await;
    let found = store.get_session(&session.secret_hash).await.unwrap();
    let unknown = store.get_session(&"00".repeat(32)).await.unwrap();
    store.touch_session(session.id, at(160)).await.unwrap();
    // A request that started earlier and finished later: the time does not go back.
    store.touch_session(session.id, at(120)).await.unwrap();
    let touched = store.get_session(&session.secret_hash).await.unwrap();
    let listed = store.list_sessions(ann.id).await.unwrap();
    let token_login = event(&org, "login_succeeded", None, at(300));
    store
        .record_login(ann.id, at(300), std::slice::from_ref(&token_login))
        .await
        .unwrap();

    // Assert
    assert_eq!(signed_in.last_login_at, Some(at(100)));
    assert_eq!(found, Some(session.clone()));
    assert_eq!(unknown, None);
    let mut seen = session.clone();
    seen.last_seen_at = at(160);
    assert_eq!(touched, Some(seen.clone()));
    assert_eq!(listed, [seen, earlier], "newest first");
    assert_eq!(user(&store, ann.id).await.last_login_at, Some(at(300)));
    assert_eq!(
        events_named(&store, &org, "login_succeeded").await,
        [token_login, login]
    );
}

async fn sessions_end_when_idle_too_long_or_past_their_absolute_end(store: Arc<dyn Store>) {
    // Arrange: `now` is at(10_000); sessions idle since before at(8_200) have ended.
    let org = org_in(&store, "acme").await;
    let ann = user_in(&store, &org, "ann@example.com").await;
    let bob = user_in(&store, &org, "bob@example.com").await;
    let (now, idle_cutoff) = (at(10_000), at(8_200));
    let with = |user: &UserRecord, last_seen: i64, expires: i64| {
        let mut s = new_session(user, 0);
        s.last_seen_at = at(last_seen);
        s.expires_at = at(expires);
        s
    };
    let fresh = with(&ann, 9_000, 20_000);
    let idle = with(&ann, 8_199, 20_000);
    let idle_edge = with(&bob, 8_200, 20_000);
    let at_end = with(&bob, 9_999, 10_000);
    let before_end = with(&ann, 9_999, 10_001);
    for s in [&fresh, &idle, &idle_edge, &at_end, &before_end] {
        store.insert_session(s, &[]).await.unwrap();
    }

    // Act
    let live_before = store.count_live_sessions(now, idle_cutoff).await.unwrap();
    let deleted = store
        .delete_expired_sessions(now, idle_cutoff)
        .await
        .unwrap();
    let deleted_again = store
        .delete_expired_sessions(now, idle_cutoff)
        .await
        .unwrap();
    let live_after = store.count_live_sessions(now, idle_cutoff).await.unwrap();

    // Assert
    assert_eq!(live_before, 3);
    assert_eq!(deleted, 2, "one idle too long, one at its absolute end");
    assert_eq!(deleted_again, 0);
    assert_eq!(live_after, 3);
    assert_eq!(
        store.list_sessions(ann.id).await.unwrap(),
        [before_end, fresh]
    );
    assert_eq!(store.list_sessions(bob.id).await.unwrap(), [idle_edge]);
    assert_eq!(
        store
            .count_live_sessions(at(10_001), idle_cutoff)
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.count_live_sessions(now, at(9_001)).await.unwrap(), 1);
}

async fn tokens_revoked_by_a_user_update_are_announced_to_the_others(
    writer: Arc<dyn Store>,
    listener: Arc<dyn Store>,
) {
    // Arrange
    let Some(mut heard) = listener.invalidations().await.unwrap() else {
        return;
    };
    let org = org_in(&writer, "acme").await;
    let ann = user_in(&writer, &org, "ann@example.com").await;
    let first = inserted(&writer, owned_token(&org, "first", &ann)).await;
    let second = inserted(&writer, owned_token(&org, "second", &ann)).await;
    let mut off = ann.clone();
    off.disabled_at = Some(at(10));
    let all = UserChange {
        revoke: RevokeOwned::All,
        end_sessions: EndSessions::All,
        revoke_event: None,
        session_event: None,
    };

    // Act
    let revoked = writer
        .update_user(&off, all.clone(), at(10), &[])
        .await
        .unwrap();
    let mut announced = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("an invalidation within 5 s")
            .expect("the stream is open");
        announced.push(next);
    }
    let nothing_left = writer.update_user(&off, all, at(11), &[]).await.unwrap();
    let silence = tokio::time::timeout(Duration::from_millis(300), heard.recv()).await;

    // Assert
    assert_eq!(sorted(revoked), sorted(vec![first.id, second.id]));
    announced.sort_by_key(|i| match i {
        Invalidation::Token(id) => *id,
        Invalidation::All => Uuid::nil(),
    });
    assert_eq!(
        announced,
        sorted(vec![first.id, second.id])
            .into_iter()
            .map(Invalidation::Token)
            .collect::<Vec<_>>()
    );
    assert!(nothing_left.is_empty());
    assert!(
        silence.is_err(),
        "an update that revoked nothing announced {silence:?}"
    );
}
