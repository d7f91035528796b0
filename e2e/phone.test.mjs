// The key pages at phone size (390x844): usable without sideways scrolling of the page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openUi, verifyToken, PHONE } from './helpers.mjs';

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

/** How far the page sticks out to the right of the screen, in CSS pixels (0: not at all). */
const overflow = (ui) =>
  ui.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);

test('the key pages at phone size', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'phone', viewport: PHONE, permissions: ['clipboard-read', 'clipboard-write'] });
  await ui.signIn(server.users.member, 'empty-list');
  assert.equal(await overflow(ui), 0, 'the empty list fits');

  const { plaintext, id } = await ui.createKey({ name: 'phone key', scopes: ['tokens:read', 'tokens:rotate'], expiry: '90' });
  assert.equal(await overflow(ui), 0, 'the page showing the secret fits');
  const field = await ui.page.locator('#plaintext').boundingBox();
  const copy = await ui.page.getByRole('button', { name: 'Copy' }).boundingBox();
  assert.ok(field.x >= 0 && field.x + field.width <= PHONE.width, 'the key field is on screen');
  assert.ok(copy.x >= 0 && copy.x + copy.width <= PHONE.width, 'the Copy button is on screen');
  await ui.page.getByRole('button', { name: 'Copy' }).tap();
  await assert.doesNotReject(ui.page.locator('#copy-status').filter({ hasText: 'Copied' }).waitFor());
  await ui.shot('copied');
  const copied = await ui.page.evaluate(() => navigator.clipboard.readText());
  assert.equal(copied, plaintext);
  assert.equal((await verifyToken(server, copied)).body.valid, true);

  await ui.goto('/ui/keys', 'list');
  assert.equal(await overflow(ui), 0, 'the list scrolls inside its table, not the page');
  await ui.goto('/ui/keys/new', 'new');
  assert.equal(await overflow(ui), 0, 'the create form fits');
  await ui.goto(`/ui/keys/${id}`, 'key');
  assert.equal(await overflow(ui), 0, "the key's page fits");
  for (const name of ['Revoke key', 'Rotate key', 'Disable key']) {
    const b = await ui.page.getByRole('button', { name }).boundingBox();
    assert.ok(b.x >= 0 && b.x + b.width <= PHONE.width, `${name} is within the screen's width`);
  }
  await ui.goto('/ui/keys/not-a-key', 'not-found');
  assert.equal(await overflow(ui), 0);
});
