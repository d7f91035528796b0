//! The verify path's cache, observed through a store wrapper that counts and can hold reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey::clock::{Clock, SystemClock};
use latchkey::service::model::{
    CreateTokenRequest, OrgScope, TokenType, VerifyCode, VerifyRequest,
};
use latchkey::service::{Authority, AuthorityConfig, Caller, RequestMeta};
use latchkey::store::{
    AuditListQuery, AuditRecord, EndSessions, HourCount, OrgRecord, SessionRecord, Store,
    StoreResult, TokenListQuery, TokenRecord, UsageDelta, UserChange, UserListQuery, UserRecord,
    VerifyRecord,
};
use tempfile::TempDir;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::helpers::db_url;

/// Passes everything to SQLite, counting the verify path's token reads; when `hold_next` is set,
/// the next such read fetches its rows and then waits for `release` before returning them.
struct SpyStore {
    inner: Arc<dyn Store>,
    token_reads: AtomicUsize,
    hold_next: AtomicBool,
    holding: Notify,
    release: Notify,
}

#[async_trait]
impl Store for SpyStore {
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn org_count(&self) -> StoreResult<i64> {
        self.inner.org_count().await
    }
    async fn get_org(&self, id: Uuid) -> StoreResult<Option<OrgRecord>> {
        self.inner.get_org(id).await
    }
    async fn find_org_by_name(&self, name: &str) -> StoreResult<Option<OrgRecord>> {
        self.inner.find_org_by_name(name).await
    }
    async fn create_org(
        &self,
        org: &OrgRecord,
        t: Option<&TokenRecord>,
        e: &[AuditRecord],
    ) -> StoreResult<()> {
        self.inner.create_org(org, t, e).await
    }
    async fn insert_token(
        &self,
        t: &TokenRecord,
        e: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.insert_token(t, e, now).await
    }
    async fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>> {
        self.inner.get_token(id).await
    }
    async fn get_tokens_for_verify(&self, ids: &[Uuid]) -> StoreResult<Vec<VerifyRecord>> {
        self.token_reads.fetch_add(1, Ordering::SeqCst);
        let row = self.inner.get_tokens_for_verify(ids).await;
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.holding.notify_one();
            self.release.notified().await;
        }
        row
    }
    async fn audit_after(
        &self,
        org_id: Option<Uuid>,
        after: Uuid,
        actions: &[&str],
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>> {
        self.inner.audit_after(org_id, after, actions, limit).await
    }
    async fn find_lookup(&self, lookup: &str) -> StoreResult<Option<Uuid>> {
        self.inner.find_lookup(lookup).await
    }
    async fn any_lookup_in(&self, start: &str, end: &str) -> StoreResult<bool> {
        self.inner.any_lookup_in(start, end).await
    }
    async fn import_tokens(
        &self,
        rows: &[latchkey::store::ImportRow],
        commit: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<latchkey::store::ImportStatus>> {
        self.inner.import_tokens(rows, commit, now).await
    }
    async fn list_tokens(&self, q: &TokenListQuery) -> StoreResult<Vec<TokenRecord>> {
        self.inner.list_tokens(q).await
    }
    async fn revoke_token(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        e: &AuditRecord,
    ) -> StoreResult<bool> {
        self.inner.revoke_token(id, now, e).await
    }
    async fn add_usage(&self, batch: Arc<[UsageDelta]>) -> StoreResult<()> {
        self.inner.add_usage(batch).await
    }
    async fn list_family(&self, family: Uuid) -> StoreResult<Vec<TokenRecord>> {
        self.inner.list_family(family).await
    }
    async fn usage_hours(&self, id: Uuid, since: DateTime<Utc>) -> StoreResult<Vec<HourCount>> {
        self.inner.usage_hours(id, since).await
    }
    async fn delete_usage_hours_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.delete_usage_hours_before(cutoff).await
    }
    async fn update_org(&self, org: &OrgRecord, e: &AuditRecord) -> StoreResult<()> {
        self.inner.update_org(org, e).await
    }
    async fn rotate_token(
        &self,
        old: Uuid,
        old_expires_at: DateTime<Utc>,
        t: &TokenRecord,
        e: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.inner
            .rotate_token(old, old_expires_at, t, e, now)
            .await
    }
    async fn revoke_family(
        &self,
        f: Uuid,
        now: DateTime<Utc>,
        e: &AuditRecord,
    ) -> StoreResult<Vec<Uuid>> {
        self.inner.revoke_family(f, now, e).await
    }
    async fn set_disabled(
        &self,
        id: Uuid,
        at: Option<DateTime<Utc>>,
        e: &AuditRecord,
    ) -> StoreResult<bool> {
        self.inner.set_disabled(id, at, e).await
    }
    async fn list_audit(&self, q: &AuditListQuery) -> StoreResult<Vec<AuditRecord>> {
        self.inner.list_audit(q).await
    }
    async fn insert_audit(&self, e: &[AuditRecord]) -> StoreResult<()> {
        self.inner.insert_audit(e).await
    }
    async fn insert_user(&self, u: &UserRecord, e: &[AuditRecord]) -> StoreResult<()> {
        self.inner.insert_user(u, e).await
    }
    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        self.inner.get_user(id).await
    }
    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        self.inner.find_user_by_email(email).await
    }
    async fn find_user_by_setup_hash(&self, h: &str) -> StoreResult<Option<UserRecord>> {
        self.inner.find_user_by_setup_hash(h).await
    }
    async fn list_users(&self, q: &UserListQuery) -> StoreResult<Vec<UserRecord>> {
        self.inner.list_users(q).await
    }
    async fn count_active_admins(&self, org_id: Uuid) -> StoreResult<i64> {
        self.inner.count_active_admins(org_id).await
    }
    async fn update_user(
        &self,
        u: &UserRecord,
        c: UserChange<'_>,
        now: DateTime<Utc>,
        e: &[AuditRecord],
    ) -> StoreResult<Vec<Uuid>> {
        self.inner.update_user(u, c, now, e).await
    }
    async fn record_login(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        e: &[AuditRecord],
    ) -> StoreResult<()> {
        self.inner.record_login(id, at, e).await
    }
    async fn insert_session(&self, s: &SessionRecord, e: &[AuditRecord]) -> StoreResult<()> {
        self.inner.insert_session(s, e).await
    }
    async fn get_session(&self, h: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.get_session(h).await
    }
    async fn touch_session(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        self.inner.touch_session(id, at).await
    }
    async fn list_sessions(&self, user: Uuid) -> StoreResult<Vec<SessionRecord>> {
        self.inner.list_sessions(user).await
    }
    async fn end_sessions(
        &self,
        user: Uuid,
        which: EndSessions,
        e: Option<&AuditRecord>,
    ) -> StoreResult<u64> {
        self.inner.end_sessions(user, which, e).await
    }
    async fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
        idle: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.inner.delete_expired_sessions(now, idle).await
    }
    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle: DateTime<Utc>,
    ) -> StoreResult<i64> {
        self.inner.count_live_sessions(now, idle).await
    }
}

struct Fixture {
    _dir: TempDir,
    spy: Arc<SpyStore>,
    authority: Arc<Authority>,
    admin: Caller,
}

async fn fixture() -> Fixture {
    let dir = TempDir::new().unwrap();
    let spy = Arc::new(SpyStore {
        inner: latchkey::store::connect(&db_url(dir.path())).await.unwrap(),
        token_reads: AtomicUsize::new(0),
        hold_next: AtomicBool::new(false),
        holding: Notify::new(),
        release: Notify::new(),
    });
    let authority = Arc::new(Authority::new(spy.clone(), AuthorityConfig::default()));
    let boot = authority
        .bootstrap("default", SystemClock.now())
        .await
        .unwrap();
    let principal = authority
        .authenticate(boot.plaintext.expose(), None, SystemClock.now())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        spy,
        authority,
        admin: Caller::new(principal, RequestMeta::default()),
    }
}

async fn create(f: &Fixture, name: &str) -> (String, Uuid) {
    let req = CreateTokenRequest {
        org_id: None,
        name: name.into(),
        kind: TokenType::Pat,
        permissions: None,
        scopes: None,
        expires_at: None,
        ttl_seconds: None,
        metadata: None,
    };
    let c = f
        .authority
        .create_token(&f.admin, req, SystemClock.now())
        .await
        .unwrap();
    (c.plaintext, c.token.id)
}

async fn verify(f: &Fixture, token: &str) -> VerifyCode {
    let req = VerifyRequest {
        token: token.into(),
        required_scopes: vec![],
    };
    f.authority
        .verify(&req, None, SystemClock.now())
        .await
        .unwrap()
        .code
}

#[tokio::test]
async fn steady_state_verifications_make_no_database_round_trip() {
    // Arrange
    let f = fixture().await;
    let (t, _) = create(&f, "hot").await;
    let before = f.spy.token_reads.load(Ordering::SeqCst);

    // Act
    for _ in 0..100 {
        assert_eq!(verify(&f, &t).await, VerifyCode::Valid);
    }

    // Assert: one read to fill the cache, none after.
    assert_eq!(f.spy.token_reads.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test]
async fn misses_that_arrive_together_are_read_in_one_round_trip() {
    // Arrange: twenty tokens not yet in the cache, one of them asked for six times.
    let f = Arc::new(fixture().await);
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(create(&f, &format!("cold {i}")).await.0);
    }
    let asked: Vec<String> = tokens
        .iter()
        .cloned()
        .chain(std::iter::repeat_n(tokens[0].clone(), 5))
        .collect();
    let before = f.spy.token_reads.load(Ordering::SeqCst);

    // Act: on this single-threaded runtime every verification reaches the loader before it runs.
    let tasks: Vec<_> = asked
        .into_iter()
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move { verify(&f, &t).await })
        })
        .collect();
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }

    // Assert
    assert!(codes.iter().all(|c| *c == VerifyCode::Valid), "{codes:?}");
    assert_eq!(f.spy.token_reads.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test]
async fn well_formed_unknown_ids_are_remembered_as_missing() {
    let f = fixture().await;
    let unknown = latchkey::token::format::format_token(
        &Default::default(),
        latchkey::token::TokenKind::Pat,
        Uuid::now_v7(),
        &[4u8; 32],
    );
    let before = f.spy.token_reads.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(verify(&f, &unknown).await, VerifyCode::Invalid);
    }
    assert_eq!(f.spy.token_reads.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test]
async fn a_cache_fill_that_raced_a_revoke_does_not_keep_the_token_alive() {
    // Arrange: a verification whose cache fill has read the live row and is held there.
    let f = fixture().await;
    let (t, id) = create(&f, "racy").await;
    f.spy.hold_next.store(true, Ordering::SeqCst);
    let held = {
        let authority = f.authority.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let req = VerifyRequest {
                token: t,
                required_scopes: vec![],
            };
            authority
                .verify(&req, None, SystemClock.now())
                .await
                .unwrap()
                .code
        })
    };
    f.spy.holding.notified().await;

    // Act: the revoke commits while the old row is in flight; then the fill completes.
    f.authority
        .revoke_token(&f.admin, OrgScope::default(), id, SystemClock.now())
        .await
        .unwrap();
    f.spy.release.notify_one();
    let in_flight = held.await.unwrap();

    // Assert: the request that started before the revoke may pass; the next one must not.
    assert_eq!(in_flight, VerifyCode::Valid);
    assert_eq!(verify(&f, &t).await, VerifyCode::Invalid);
}
