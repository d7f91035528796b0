// A key's life in the console: created (shown once, copied), revoked, rotated; each step
// checked against the real verify endpoint.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
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

test('create a key, copy it, it verifies, and a reload never shows it again', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'create-key', permissions: ['clipboard-read', 'clipboard-write'] });
  await ui.signIn(server.users.member);
  const { plaintext, id } = await ui.createKey({ name: 'ci deploy', scopes: ['tokens:read'], expiry: '7' });
  assert.match(plaintext, /^lk_pat_/);
  await assert.doesNotReject(ui.page.getByRole('heading', { name: 'Your new API key: ci deploy' }).waitFor());

  // The Copy button puts exactly the key on the clipboard, and says so.
  await ui.page.evaluate(() => navigator.clipboard.writeText('clipboard before copy'));
  await ui.page.getByRole('button', { name: 'Copy' }).click();
  await assert.doesNotReject(ui.page.locator('#copy-status').filter({ hasText: 'Copied to the clipboard.' }).waitFor());
  await ui.shot('copied');
  const copied = await ui.page.evaluate(() => navigator.clipboard.readText());
  assert.equal(copied, plaintext);

  const v = await verifyToken(server, copied);
  assert.equal(v.status, 200);
  assert.equal(v.body.valid, true);
  assert.equal(v.body.code, 'VALID');
  assert.equal(v.body.token_id, id);
  assert.deepEqual(v.body.scopes, ['tokens:read']);
  const expires = Date.parse(v.body.expires_at);
  const days = (expires - Date.now()) / 86_400_000;
  assert.ok(days > 6.9 && days <= 7.01, `the 7-day preset gives 7 days (got ${days.toFixed(3)} days)`);

  // A reload first asks (the page holds the secret), then resends the form: the key is not
  // made again and its secret is not shown again.
  const dialogsBefore = ui.dialogs.length;
  const res = await ui.page.reload();
  await ui.shot('reloaded');
  assert.ok(ui.dialogs.slice(dialogsBefore).some((d) => d.type === 'beforeunload'), 'leaving the secret page asks first');
  assert.equal(res.status(), 409);
  await assert.doesNotReject(ui.page.getByRole('heading', { name: 'This was done already' }).waitFor());
  assert.ok(!(await ui.page.content()).includes(plaintext), 'the reloaded page does not hold the key');
  assert.equal(await ui.page.locator('#plaintext').count(), 0);

  // Nor does any other page; the list holds one key of that name.
  await ui.goto('/ui/keys', 'list');
  assert.ok(!(await ui.page.content()).includes(plaintext));
  assert.equal(await ui.page.getByRole('link', { name: 'ci deploy', exact: true }).count(), 1, 'the reload made no second key');
  await ui.goto(`/ui/keys/${id}`, 'key');
  assert.ok(!(await ui.page.content()).includes(plaintext));
  assert.match(await ui.page.locator('dl.facts').innerText(), /tokens:read/);

  // Back to the secret page through history: nothing is shown again either.
  await ui.page.goBack().catch(() => {});
  await ui.page.goBack().catch(() => {});
  await ui.page.waitForLoadState('load');
  await ui.shot('back');
  assert.ok(!(await ui.page.content()).includes(plaintext), `history does not bring the key back (at ${ui.page.url()})`);
});

test('revoke through the confirmation: the key is refused on the next request', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'revoke' });
  await ui.signIn(server.users.member);
  const { plaintext, id } = await ui.createKey({ name: 'to revoke', scopes: ['tokens:read'] });
  assert.equal((await verifyToken(server, plaintext)).body.valid, true, 'valid (and cached) before');

  await ui.goto(`/ui/keys/${id}`, 'key');
  const form = ui.page.locator('form[action$="/revoke"]');
  const button = form.getByRole('button', { name: 'Revoke key' });

  const posts = [];
  ui.page.on('request', (r) => { if (r.method() === 'POST') posts.push(r.url()); });

  // Without the box ticked the browser does not send the form (and asks nothing).
  const asked = ui.dialogs.length;
  await button.click();
  const unticked = await form.getByLabel('I understand; revoke it').evaluate((el) => el.validity.valueMissing);
  assert.equal(unticked, true, 'the box is what is missing');
  await ui.page.waitForTimeout(300);
  assert.deepEqual(posts, [], 'nothing was sent');
  assert.equal(ui.dialogs.length, asked, 'no confirmation before the box is ticked');

  // Ticked, and the confirm() answered "cancel": still nothing.
  await form.getByLabel('I understand; revoke it').check();
  ui.answerDialog = () => false;
  await button.click();
  await ui.page.waitForTimeout(300);
  assert.deepEqual(posts, [], 'cancel sends nothing');
  assert.equal(ui.dialogs.at(-1)?.type, 'confirm');
  assert.match(ui.dialogs.at(-1).message, /^Revoke to revoke\?/);
  assert.equal((await verifyToken(server, plaintext)).body.valid, true, 'cancel keeps the key');

  // Accepted: back on the key's page, revoked, and refused at once.
  ui.answerDialog = null;
  await Promise.all([
    ui.page.waitForResponse((r) => r.url().endsWith(`/ui/keys/${id}`) && r.request().method() === 'GET'),
    button.click(),
  ]);
  await ui.page.waitForLoadState('load');
  await ui.shot('revoked');
  assert.equal(ui.dialogs.at(-1)?.type, 'confirm');
  assert.equal(await ui.page.locator('h1 .state').innerText(), 'revoked');
  assert.equal(await ui.page.locator('form[action$="/revoke"]').count(), 0, 'no more actions on a revoked key');
  const v = await verifyToken(server, plaintext);
  assert.deepEqual(v.body, { valid: false, code: 'INVALID' });
});

test('rotate with grace "immediately": the old key is refused, the new one works', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'rotate', permissions: ['clipboard-read', 'clipboard-write'] });
  await ui.signIn(server.users.admin);
  const old = await ui.createKey({ name: 'rotating', scopes: ['tokens:read', 'audit:read'], expiry: '30' });
  assert.equal((await verifyToken(server, old.plaintext)).body.valid, true);

  await ui.goto(`/ui/keys/${old.id}`, 'key');
  const form = ui.page.locator('form[action$="/rotate"]');
  assert.equal(await form.getByLabel('Old key stops').inputValue(), '3600', 'the default grace is an hour');
  await form.getByLabel('Old key stops').selectOption({ label: 'immediately' });
  const [res] = await Promise.all([
    ui.page.waitForResponse((r) => r.url().endsWith('/rotate') && r.request().method() === 'POST'),
    form.getByRole('button', { name: 'Rotate key' }).click(),
  ]);
  await ui.page.waitForLoadState('load');
  await ui.shot('rotated');
  assert.equal(res.status(), 201);
  await assert.doesNotReject(ui.page.getByRole('heading', { name: 'The rotated API key: rotating' }).waitFor());
  await ui.page.getByRole('button', { name: 'Copy' }).click();
  await assert.doesNotReject(ui.page.locator('#copy-status').filter({ hasText: 'Copied' }).waitFor());
  const fresh = await ui.page.evaluate(() => navigator.clipboard.readText());
  assert.equal(fresh, await ui.page.locator('#plaintext').inputValue());
  assert.notEqual(fresh, old.plaintext);
  const freshId = await ui.keyIdOnSecretPage();
  assert.notEqual(freshId, old.id);

  assert.deepEqual((await verifyToken(server, old.plaintext)).body, { valid: false, code: 'INVALID' }, 'the old key stops at once');
  const v = await verifyToken(server, fresh);
  assert.equal(v.body.valid, true);
  assert.equal(v.body.token_id, freshId);
  assert.deepEqual([...v.body.scopes].sort(), ['audit:read', 'tokens:read'], 'the same scopes');

  // The old key's page points at its replacement.
  await Promise.all([ui.page.waitForURL(`**/ui/keys/${freshId}`), ui.page.getByRole('link', { name: 'I have stored it: go to the key' }).click()]);
  await ui.shot('new-key');
  await ui.goto(`/ui/keys/${old.id}`, 'old-key');
  // Rotation ends the old key by its expiry (now + grace), so it reads "expired".
  assert.match(await ui.page.locator('h1 .state').innerText(), /^(expired|revoked)$/);
  await assert.doesNotReject(ui.page.getByRole('cell', { name: 'token_rotated', exact: true }).first().waitFor(), 'its history shows the rotation');
  assert.equal(await ui.page.getByRole('link', { name: freshId }).count(), 1, 'the old key links to its replacement');
});
