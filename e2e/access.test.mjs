// Who reaches what: members see only their own keys, and forms from another origin are refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer, launchBrowser, openUi, verifyToken } from './helpers.mjs';

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a member sees neither another member's keys nor their pages", async (t) => {
  const mo = await openUi(browser, server, t, { name: 'members-mo' });
  await mo.signIn(server.users.member);
  const mine = await mo.createKey({ name: 'mo private key', scopes: ['tokens:read'] });

  const olu = await openUi(browser, server, t, { name: 'members-olu' });
  await olu.signIn(server.users.other);
  const theirs = await olu.createKey({ name: 'olu own key', scopes: ['tokens:read'] });

  for (const q of ['', '?owner=', '?state=active']) {
    await olu.goto(`/ui/keys${q}`, `list${q.replace(/[?=]/g, '-')}`);
    assert.equal(await olu.page.getByRole('link', { name: 'olu own key' }).count(), 1, `olu's own key is listed (${q})`);
    assert.equal(await olu.page.getByText('mo private key').count(), 0, `mo's key is not listed (${q})`);
    assert.ok(!(await olu.page.content()).includes(mine.id), `mo's key id is nowhere in the page (${q})`);
  }

  const csrf = await olu.csrfToken();

  // Mo's key page answers the same 404 as a key that never existed.
  const res = await olu.goto(`/ui/keys/${mine.id}`, 'other-key');
  assert.equal(res.status(), 404);
  await assert.doesNotReject(olu.page.getByRole('heading', { name: 'Not found' }).waitFor());
  assert.ok(!(await olu.page.content()).includes('mo private key'));
  const never = await olu.goto('/ui/keys/01a22e50-0000-7000-8000-000000000000', 'no-such-key');
  assert.equal(never.status(), 404);
  assert.equal(await olu.page.locator('h1').innerText(), 'Not found');

  // Nor can Olu act on it with a well-formed form of its own session.
  for (const action of ['revoke', 'disable']) {
    const r = await olu.context.request.post(`${server.url}/ui/keys/${mine.id}/${action}`, {
      form: { csrf_token: csrf, confirm: 'yes' },
      maxRedirects: 0,
    });
    assert.equal(r.status(), 404, `olu cannot ${action} mo's key`);
  }
  assert.equal((await verifyToken(server, mine.plaintext)).body.valid, true, "mo's key still works");
  assert.equal((await verifyToken(server, theirs.plaintext)).body.valid, true);

  // Mo still sees its key; an admin sees both.
  await mo.goto('/ui/keys', 'mo-list');
  assert.equal(await mo.page.getByRole('link', { name: 'mo private key' }).count(), 1);
  assert.equal(await mo.page.getByText('olu own key').count(), 0, "mo does not see olu's key either");
  const ada = await openUi(browser, server, t, { name: 'members-admin' });
  await ada.signIn(server.users.admin);
  assert.equal(await ada.page.getByRole('link', { name: 'mo private key' }).count(), 1, 'the admin sees every key of the org');
  assert.equal(await ada.page.getByRole('link', { name: 'olu own key' }).count(), 1);
});

test('a form posted from another origin is refused', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'cross-origin' });
  await ui.signIn(server.users.admin);
  const victim = await ui.createKey({ name: 'victim key', scopes: ['tokens:read'] });
  await ui.goto(`/ui/keys/${victim.id}`, 'key');
  const csrf = await ui.csrfToken();
  const post = (path, form, headers = {}) =>
    ui.context.request.post(`${server.url}${path}`, { form, headers, maxRedirects: 0 });
  const evil = { Origin: 'http://evil.example' };

  // Session cookie and the right CSRF token, but another origin: refused.
  const created = await post('/ui/keys/new', { csrf_token: csrf, name: 'evil key', type: 'pat', scope: 'tokens:read', expiry: '7' }, evil);
  assert.equal(created.status(), 403);
  assert.match(await created.text(), /[Tt]his form was sent from another site and was refused/);
  const revoked = await post(`/ui/keys/${victim.id}/revoke`, { csrf_token: csrf, confirm: 'yes' }, evil);
  assert.equal(revoked.status(), 403);
  const fetchSite = await post(`/ui/keys/${victim.id}/revoke`, { csrf_token: csrf, confirm: 'yes' }, { 'Sec-Fetch-Site': 'cross-site' });
  assert.equal(fetchSite.status(), 403, 'Sec-Fetch-Site: cross-site alone is refused too');
  const signOut = await post('/ui/logout', { csrf_token: csrf }, evil);
  assert.equal(signOut.status(), 403, 'sign-out is a form like any other');
  // The REST API with the session cookie and its CSRF header: refused from another origin too.
  const api = await ui.context.request.post(`${server.url}/v1/tokens`, {
    data: { name: 'evil api key', scopes: ['tokens:read'] },
    headers: { ...evil, 'X-CSRF-Token': csrf },
  });
  assert.equal(api.status(), 403);
  assert.equal((await api.json()).error.code, 'permission_denied');

  assert.equal((await verifyToken(server, victim.plaintext)).body.valid, true, 'the key was not revoked');
  await ui.goto('/ui/keys', 'list-after');
  assert.equal(await ui.page.getByText(/evil/).count(), 0, 'no key was made');

  // The same request from the console's own origin goes through: the origin was the reason.
  const control = await post('/ui/keys/new', { csrf_token: csrf, name: 'same origin key', type: 'pat', scope: 'tokens:read', expiry: '7' }, { Origin: server.origin });
  assert.equal(control.status(), 201);
  // And a form without the CSRF token is refused even from the right origin.
  const noToken = await post(`/ui/keys/${victim.id}/revoke`, { confirm: 'yes' }, { Origin: server.origin });
  assert.equal(noToken.status(), 403);
  assert.equal((await verifyToken(server, victim.plaintext)).body.valid, true);
});

test('a page on another local port that auto-submits a form to the console is refused', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'cross-port' });
  await ui.signIn(server.users.admin);
  const victim = await ui.createKey({ name: 'cross port victim', scopes: ['tokens:read'] });
  await ui.goto(`/ui/keys/${victim.id}`, 'key');
  const csrf = await ui.csrfToken();

  // The attacker's page: same host (127.0.0.1, so "same-site" and the SameSite=Strict cookie
  // goes along), another port. It even knows the CSRF token: only the origin check is left.
  const attacker = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>free prizes</title>
<form method="post" action="${server.url}/ui/keys/${victim.id}/revoke">
<input name="csrf_token" value="${csrf}"><input name="confirm" value="yes"></form>
<script>document.forms[0].submit()</script>`);
  });
  await new Promise((resolve) => attacker.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => attacker.close(resolve)));
  const attackerUrl = `http://127.0.0.1:${attacker.address().port}/`;

  const [res] = await Promise.all([
    ui.page.waitForResponse((r) => r.url().endsWith(`/ui/keys/${victim.id}/revoke`)),
    ui.page.goto(attackerUrl),
  ]);
  await ui.page.waitForURL(`**/ui/keys/${victim.id}/revoke`);
  await ui.page.waitForLoadState('load');
  await ui.shot('refused');
  assert.equal(res.status(), 403);
  assert.equal(res.request().headers()['origin'], attackerUrl.replace(/\/$/, ''));
  await assert.doesNotReject(ui.page.getByRole('heading', { name: 'Not allowed' }).waitFor());
  assert.equal((await verifyToken(server, victim.plaintext)).body.valid, true, 'the key still works');
  await ui.goto(`/ui/keys/${victim.id}`, 'key-after');
  assert.equal(await ui.page.locator('h1 .state').innerText(), 'active');
});
