// The people pages of the console: inviting a person (the one-time setup link, the setup page,
// the first sign-in), the audit log of what was done in the console, what a member may not
// reach, disabling a user (its sessions and keys end at once), and one's own account (sessions,
// password). Every step is checked against what the person sees, and keys against REST.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openUi, verifyToken, DEFAULT_USERS, PHONE } from './helpers.mjs';

// Besides the admin and the two members: a member who gets disabled and one who changes its
// password, so that no test spoils another's users.
const USERS = {
  ...DEFAULT_USERS,
  gone: { email: 'gil@example.test', name: 'Gil Gone', role: 'member', password: 'gil passphrase for the e2e suite' },
  tess: { email: 'tess@example.test', name: 'Tess Twice', role: 'member', password: 'tess passphrase for the e2e suite' },
};

let server;
let browser;
before(async () => {
  // Invites hand out links built from --public-url: the server must know its own address.
  server = await startServer({ users: USERS, publicUrl: true });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/**
 * How far the page sticks out to the right of the screen, in CSS pixels (0: not at all), and
 * the outermost elements that stick out (to name in a failure). On a phone a page wider than the
 * screen is shown zoomed out, so the width compared is the screen's, not the layout viewport's.
 */
const overflow = (ui) =>
  ui.page.evaluate((screenWidth) => {
    const wide = document.documentElement.scrollWidth - screenWidth;
    const out = [];
    for (const el of document.querySelectorAll('body *')) {
      if (el.getBoundingClientRect().right <= screenWidth + 0.5) continue;
      if (out.some((o) => o.contains(el))) continue;
      // Inside a box that scrolls sideways on its own, sticking out is that box's business;
      // but such a box holds an absolutely positioned element only if it is (or holds) the
      // element's containing block, its nearest positioned ancestor.
      let held = getComputedStyle(el).position !== 'absolute';
      let scrolled = false;
      for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
        const st = getComputedStyle(p);
        if (!held && st.position === 'static') continue;
        held = true;
        if (/(auto|scroll|hidden)/.test(st.overflowX) && p.getBoundingClientRect().right <= screenWidth + 0.5) { scrolled = true; break; }
      }
      if (!scrolled) out.push(el);
    }
    const name = (el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}${el.className ? `.${String(el.className).trim().replace(/\s+/g, '.')}` : ''}`;
    return { wide, culprits: out.slice(0, 5).map((el) => `${name(el)} "${el.textContent.trim().slice(0, 40)}"`) };
  }, ui.page.viewportSize().width);

/** The row of the users table for `email`. */
const userRow = (ui, email) =>
  ui.page.locator('tbody tr').filter({ has: ui.page.getByRole('cell', { name: email, exact: true }) });

/** Clicks `locator` (a submit button) and waits for the page the POST ends on; resolves with the POST's response. */
async function submit(ui, locator, urlEnd) {
  const [res] = await Promise.all([
    ui.page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname.endsWith(urlEnd)),
    locator.click(),
  ]);
  await ui.page.waitForLoadState('load');
  return res;
}

/** The names of the links in the main navigation. */
const navLinks = (ui) => ui.page.locator('nav[aria-label="Main"] a').allInnerTexts();

test('an admin invites a person, who sets a password through the link and signs in', async (t) => {
  const admin = await openUi(browser, server, t, { name: 'invite-admin', permissions: ['clipboard-read', 'clipboard-write'] });
  await admin.signIn(server.users.admin);
  await admin.goto('/ui/users', 'users');
  assert.deepEqual(await navLinks(admin), ['API keys', 'Users', 'Audit log', 'Settings', 'Account']);
  assert.equal(await admin.page.locator('nav a[aria-current="page"]').innerText(), 'Users');
  assert.equal(await userRow(admin, 'ada@example.test').locator('th').innerText(), 'Ada Admin (you)');

  const newbie = { email: 'nia@example.test', name: 'Nia New', password: 'nia chose this long passphrase' };
  const invite = admin.page.locator('form[action="/ui/users/invite"]');
  await invite.getByLabel('Email').fill(newbie.email);
  await invite.getByLabel('Name').fill(newbie.name);
  await invite.getByLabel('Role').selectOption('member');
  await admin.shot('invite-filled');
  const res = await submit(admin, invite.getByRole('button', { name: 'Invite' }), '/ui/users/invite');
  await admin.shot('invited');
  assert.equal(res.status(), 201);
  await assert.doesNotReject(admin.page.getByRole('heading', { name: 'Nia New is invited' }).waitFor());

  // The link is on the page once, points at this server, and the Copy button copies exactly it.
  const link = await admin.page.getByLabel('Setup link').inputValue();
  assert.ok(link.startsWith(`${server.url}/ui/setup?token=`), `the setup link points at this server: ${link}`);
  const token = new URL(link).searchParams.get('token');
  assert.ok(token && token.length >= 32, 'the link carries a long token');
  await admin.page.getByRole('button', { name: 'Copy' }).click();
  await assert.doesNotReject(admin.page.locator('#copy-status').filter({ hasText: 'Copied to the clipboard.' }).waitFor());
  assert.equal(await admin.page.evaluate(() => navigator.clipboard.readText()), link);

  // Back to the list through the page's own link (which asks first): Nia is invited.
  await Promise.all([
    admin.page.waitForURL('**/ui/users'),
    admin.page.getByRole('link', { name: 'I have handed it over: back to users' }).click(),
  ]);
  await admin.shot('users-invited');
  assert.match(admin.dialogs.at(-1)?.message ?? '', /^Have you copied the setup link\?/);
  assert.ok(!(await admin.page.content()).includes(token), 'the list does not show the link again');
  assert.equal(await userRow(admin, newbie.email).locator('.state').innerText(), 'invited');
  assert.equal(await userRow(admin, newbie.email).locator('td').nth(3).innerText(), 'never', 'never signed in');
  // An invited person cannot sign in yet.
  const early = await fetch(`${server.url}/v1/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: newbie.email, password: newbie.password, name: 'too early' }),
  });
  assert.equal(early.status, 401);

  // The invited person, in a browser of its own, opens the link.
  const nia = await openUi(browser, server, t, { name: 'invite-newbie' });
  await nia.goto(link, 'setup');
  await assert.doesNotReject(nia.page.getByRole('heading', { name: 'Choose your password' }).waitFor());
  assert.equal(await nia.page.evaluate(() => document.activeElement?.id), 'password', 'the first field has the focus');
  // Two different passwords are refused, and the form is there to try again.
  await nia.page.getByLabel('New password').fill(newbie.password);
  await nia.page.getByLabel('Repeat the password').fill(`${newbie.password} typo`);
  const mismatch = await submit(nia, nia.page.getByRole('button', { name: 'Set password' }), '/ui/setup');
  await nia.shot('mismatch');
  assert.equal(mismatch.status(), 400);
  assert.equal(await nia.page.locator('#repeat-error').innerText(), 'The passwords do not match. Type the same password twice.');
  assert.equal(await nia.page.getByLabel('Repeat the password').getAttribute('aria-invalid'), 'true');

  await nia.page.getByLabel('New password').fill(newbie.password);
  await nia.page.getByLabel('Repeat the password').fill(newbie.password);
  await Promise.all([
    nia.page.waitForURL('**/ui/setup/done'),
    nia.page.getByRole('button', { name: 'Set password' }).click(),
  ]);
  await nia.shot('done');
  await assert.doesNotReject(nia.page.getByRole('heading', { name: 'Password set' }).waitFor());
  await Promise.all([nia.page.waitForURL('**/ui/login'), nia.page.getByRole('link', { name: 'Sign in' }).click()]);
  await nia.signIn(newbie);
  assert.match(await nia.page.locator('header .who').innerText(), /Nia New \(member\)/);
  assert.deepEqual(await navLinks(nia), ['API keys', 'Account'], 'a member invited as member');

  // The link worked once: opened again, it sets nothing.
  const again = await openUi(browser, server, t, { name: 'invite-reuse' });
  await again.goto(link, 'reuse');
  await again.page.getByLabel('New password').fill('someone else tries this link');
  await again.page.getByLabel('Repeat the password').fill('someone else tries this link');
  const reused = await submit(again, again.page.getByRole('button', { name: 'Set password' }), '/ui/setup');
  await again.shot('reused');
  assert.equal(reused.status(), 400);
  await assert.doesNotReject(again.page.getByRole('alert').filter({ hasText: /setup link is not valid/ }).waitFor());

  // The admin's list now shows Nia as active, signed in just now.
  await admin.goto('/ui/users', 'users-active');
  const row = userRow(admin, newbie.email);
  assert.equal(await row.locator('th').innerText(), 'Nia New');
  assert.equal(await row.locator('.state').innerText(), 'active');
  assert.equal(await row.locator('td').nth(1).innerText(), 'member');
  assert.equal(await row.locator('td').nth(3).innerText(), 'just now');

});

test('the audit log shows the create, revoke and rotate done in the console, by the admin', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'audit' });
  await ui.signIn(server.users.admin);
  const adminId = await userIdOf(ui, server.users.admin.email);

  const revoked = await ui.createKey({ name: 'audited revoke', scopes: ['tokens:read'] });
  await ui.goto(`/ui/keys/${revoked.id}`, 'revoke-key');
  const revokeForm = ui.page.locator('form[action$="/revoke"]');
  await revokeForm.getByLabel('I understand; revoke it').check();
  await submit(ui, revokeForm.getByRole('button', { name: 'Revoke key' }), '/revoke');
  assert.equal(await ui.page.locator('h1 .state').innerText(), 'revoked');

  const rotated = await ui.createKey({ name: 'audited rotate', scopes: ['tokens:read'] });
  await ui.goto(`/ui/keys/${rotated.id}`, 'rotate-key');
  const rotateForm = ui.page.locator('form[action$="/rotate"]');
  await rotateForm.getByLabel('Old key stops').selectOption({ label: 'immediately' });
  const rot = await submit(ui, rotateForm.getByRole('button', { name: 'Rotate key' }), '/rotate');
  assert.equal(rot.status(), 201);
  const rotatedTo = await ui.keyIdOnSecretPage();

  // Everything, newest first: the four key events are there, each by Ada Admin.
  // (Leaving the page showing the new secret asks first; the Ui answers yes.)
  await Promise.all([ui.page.waitForURL('**/ui/audit'), ui.page.getByRole('link', { name: 'Audit log' }).click()]);
  await ui.page.waitForLoadState('load');
  await ui.shot('all');
  assert.equal(await ui.page.locator('nav a[aria-current="page"]').innerText(), 'Audit log');
  const expected = [
    ['token_created', revoked.id],
    ['token_revoked', revoked.id],
    ['token_created', rotated.id],
    ['token_rotated', rotated.id],
    ['token_created', rotatedTo],
  ];
  for (const [action, id] of expected) {
    const r = eventRow(ui, action, id);
    assert.equal(await r.count(), 1, `one ${action} event for key ${id}`);
    assert.equal(await r.locator('td').nth(1).innerText(), 'Ada Admin', `the actor of ${action} reads as the admin's name`);
  }

  // Filtered by action, typed into the filter: only those events, and ours among them.
  for (const [action, id] of [['token_revoked', revoked.id], ['token_rotated', rotated.id], ['token_created', rotatedTo]]) {
    await ui.page.getByLabel('Action').fill(action);
    await Promise.all([ui.page.waitForURL(`**/ui/audit?action=${action}*`), ui.page.getByRole('button', { name: 'Filter' }).click()]);
    await ui.shot(`filter-${action}`);
    const actions = await ui.page.locator('tbody tr td:nth-child(3)').allInnerTexts();
    assert.ok(actions.length > 0, `some ${action} events`);
    assert.deepEqual([...new Set(actions)], [action], `only ${action} events`);
    assert.equal(await eventRow(ui, action, id).locator('td').nth(1).innerText(), 'Ada Admin');
    assert.equal(await ui.page.getByLabel('Action').inputValue(), action, 'the filter keeps what was typed');
  }
  for (const id of [revoked.id, rotated.id]) {
    assert.equal(await eventRow(ui, 'token_created', id).count(), 1, `key ${id} was created by hand, and says so`);
  }

  // The actor's name links to that person's events: each of them by Ada.
  await Promise.all([
    ui.page.waitForURL('**/ui/audit?actor=*'),
    ui.page.locator('tbody tr td:nth-child(2) a').first().click(),
  ]);
  await ui.shot('by-actor');
  assert.equal(await ui.page.getByLabel('Actor').inputValue(), `user:${adminId}`);
  const actors = await ui.page.locator('tbody tr td:nth-child(2)').allInnerTexts();
  assert.ok(actors.length >= expected.length, 'the admin has at least the key events');
  assert.deepEqual([...new Set(actors)], ['Ada Admin']);

  // A filter that matches nothing says so.
  await ui.goto('/ui/audit?action=no_such_action', 'none');
  await assert.doesNotReject(ui.page.getByText('No events match.').waitFor());
});

/** The row of the audit table for `action` on key `id`. */
function eventRow(ui, action, id) {
  return ui.page.locator('tbody tr')
    .filter({ has: ui.page.locator(`a[href="/ui/keys/${id}"]`) })
    .filter({ has: ui.page.getByRole('cell', { name: action, exact: true }) });
}

/** The id of a user, from the row of the users page (its `id="user-<id>"`). */
async function userIdOf(ui, email) {
  const page = await ui.context.newPage();
  try {
    await page.goto(`${ui.server.url}/ui/users`);
    const row = page.locator('tbody tr').filter({ has: page.getByRole('cell', { name: email, exact: true }) });
    return (await row.getAttribute('id')).replace(/^user-/, '');
  } finally {
    await page.close();
  }
}

test('a member sees no Users, Audit or Settings links and is not allowed on the users page', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'member-reach' });
  await ui.signIn(server.users.member);
  assert.deepEqual(await navLinks(ui), ['API keys', 'Account']);
  for (const name of ['Users', 'Audit log', 'Settings']) {
    assert.equal(await ui.page.getByRole('link', { name, exact: true }).count(), 0, `no ${name} link`);
  }
  const csrf = await ui.csrfToken();

  const res = await ui.goto('/ui/users', 'users');
  assert.equal(res.status(), 403);
  assert.equal(await ui.page.locator('h1').innerText(), 'Not allowed');
  assert.ok(!(await ui.page.content()).includes('ada@example.test'), 'no user of the org is shown');

  const audit = await ui.goto('/ui/audit', 'audit');
  assert.equal(audit.status(), 403);
  assert.equal(await ui.page.locator('h1').innerText(), 'Not allowed');

  // The policy may be read, not changed: no form, and a well-formed POST is refused.
  const settings = await ui.goto('/ui/settings', 'settings');
  assert.ok([200, 403].includes(settings.status()), `settings answers ${settings.status()}`);
  assert.equal(await ui.page.locator('form[action="/ui/settings"]').count(), 0, 'no policy form for a member');
  const saved = await ui.context.request.post(`${server.url}/ui/settings`, {
    form: { csrf_token: csrf, max_days: '1', default_days: '1' },
    maxRedirects: 0,
  });
  assert.equal(saved.status(), 403, 'a member cannot change the policy');

  // Nor can it invite with a well-formed form of its own session.
  const invite = await ui.context.request.post(`${server.url}/ui/users/invite`, {
    form: { csrf_token: csrf, email: 'sneaky@example.test', name: 'Sneaky', role: 'member' },
    maxRedirects: 0,
  });
  assert.equal(invite.status(), 403);
  assert.ok(!(await invite.text()).includes('/ui/setup?token='), 'no setup link was handed out');
  const admin = await openUi(browser, server, t, { name: 'member-reach-admin' });
  await admin.signIn(server.users.admin);
  await admin.goto('/ui/users', 'admin-users');
  assert.equal(await userRow(admin, 'sneaky@example.test').count(), 0, 'no user was made');
  // The admin gets the policy form the member did not, and the policy is unchanged.
  await admin.goto('/ui/settings', 'admin-settings');
  assert.equal(await admin.page.locator('form[action="/ui/settings"]').count(), 1, 'the admin has the policy form');
  assert.equal(await admin.page.getByLabel('Maximum lifetime (days)').inputValue(), '', 'the member set no maximum');
});

test('disabling a user ends its open session and its keys at once', async (t) => {
  const { gone } = server.users;
  const gil = await openUi(browser, server, t, { name: 'disable-gil' });
  await gil.signIn(gone);
  const key = await gil.createKey({ name: 'gil key', scopes: ['tokens:read'] });
  assert.equal((await verifyToken(server, key.plaintext)).body.valid, true, 'valid (and cached) before');
  await gil.goto('/ui/keys', 'keys-before');

  const admin = await openUi(browser, server, t, { name: 'disable-admin' });
  await admin.signIn(server.users.admin);
  await admin.goto('/ui/users', 'users');
  const row = userRow(admin, gone.email);
  const form = row.locator('form[action$="/disable"]');
  const button = form.getByRole('button', { name: 'Disable Gil Gone' });
  const box = form.getByLabel("Revoke Gil Gone's keys and sign them out");

  // Without the box ticked nothing is sent, and nothing asked.
  const posts = [];
  admin.page.on('request', (r) => { if (r.method() === 'POST') posts.push(r.url()); });
  const asked = admin.dialogs.length;
  await button.click();
  await admin.page.waitForTimeout(300);
  assert.equal(await box.evaluate((el) => el.validity.valueMissing), true, 'the box is what is missing');
  assert.deepEqual(posts, []);
  assert.equal(admin.dialogs.length, asked);

  // Ticked and confirmed: back on the list with a notice, Gil disabled.
  await box.check();
  await admin.shot('ticked');
  await Promise.all([admin.page.waitForURL('**/ui/users?done=disabled'), button.click()]);
  await admin.page.waitForLoadState('load');
  await admin.shot('disabled');
  assert.equal(admin.dialogs.at(-1)?.type, 'confirm');
  assert.match(admin.dialogs.at(-1).message, /^Disable Gil Gone\? Every key they own is revoked/);
  await assert.doesNotReject(admin.page.getByRole('status').filter({ hasText: 'The user was disabled' }).waitFor());
  assert.equal(await row.locator('.state').innerText(), 'disabled');
  assert.equal(await row.getByRole('button', { name: 'Enable Gil Gone' }).count(), 1, 'it can be enabled again');

  // Gil's open session is over: the next page load asks to sign in.
  await gil.goto('/ui/keys', 'after');
  assert.match(gil.page.url(), /\/ui\/login$/);
  // Its key is refused at once, though it was cached as valid.
  assert.deepEqual((await verifyToken(server, key.plaintext)).body, { valid: false, code: 'INVALID' });
  // And its password no longer signs in.
  await gil.page.getByLabel('Email').fill(gone.email);
  await gil.page.getByLabel('Password').fill(gone.password);
  const login = await submit(gil, gil.page.getByRole('button', { name: 'Sign in' }), '/ui/login');
  await gil.shot('sign-in-refused');
  assert.equal(login.status(), 401);
  assert.match(gil.page.url(), /\/ui\/login$/);
});

test('account: sign out everywhere else, then change the password with the keyboard', async (t) => {
  const { tess } = server.users;
  const desk = await openUi(browser, server, t, { name: 'account' });
  await desk.signIn(tess);
  // A second session of the same person, on a phone.
  const phone = await openUi(browser, server, t, { name: 'account', viewport: PHONE });
  await phone.signIn(tess);
  await phone.goto('/ui/account', 'account');
  assert.equal(await phone.page.locator('#sessions-h + .table-wrap tbody tr').count(), 2);

  await desk.goto('/ui/account', 'account');
  assert.equal(await desk.page.locator('nav a[aria-current="page"]').innerText(), 'Account');
  const facts = await desk.page.locator('dl.facts').innerText();
  assert.match(facts, /Tess Twice/);
  assert.match(facts, /tess@example\.test/);
  const sessions = desk.page.locator('#sessions-h + .table-wrap tbody tr');
  assert.equal(await sessions.count(), 2, 'both sessions are listed');
  assert.equal(await sessions.filter({ hasText: 'This session' }).count(), 1, 'one of them is this one');
  assert.equal(await sessions.getByRole('button', { name: /^Sign out/ }).count(), 1, 'the other can be signed out');

  await Promise.all([
    desk.page.waitForURL('**/ui/account?done=others'),
    desk.page.getByRole('button', { name: 'Sign out everywhere else' }).click(),
  ]);
  await desk.page.waitForLoadState('load');
  await desk.shot('others-ended');
  assert.equal(desk.dialogs.at(-1)?.message, 'Sign out every other session of yours?');
  await assert.doesNotReject(desk.page.getByRole('status').filter({ hasText: 'Every other session was signed out.' }).waitFor());
  assert.equal(await sessions.count(), 1);
  await assert.doesNotReject(desk.page.getByText('You are signed in here only.').waitFor());
  // The phone's session is over; this one is not.
  await phone.goto('/ui/account', 'signed-out');
  assert.match(phone.page.url(), /\/ui\/login$/);
  await desk.goto('/ui/keys', 'still-in');
  assert.match(desk.page.url(), /\/ui\/keys$/);

  // The password, with the keyboard alone: Tab to the field, type, Tab, type, Enter.
  await desk.goto('/ui/account', 'password');
  const focused = () => desk.page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
  let tabs = 0;
  while ((await focused()) !== 'current_password' && tabs < 20) {
    await desk.page.keyboard.press('Tab');
    tabs += 1;
  }
  assert.equal(await focused(), 'current_password', `Tab reaches the current password (${tabs} presses)`);
  const fresh = 'tess picked a fresh passphrase';
  await desk.page.keyboard.type(tess.password);
  await desk.page.keyboard.press('Tab');
  assert.equal(await focused(), 'new_password', 'Tab goes on to the new password');
  await desk.page.keyboard.type(fresh);
  await desk.shot('password-typed');
  await Promise.all([desk.page.waitForURL('**/ui/account?done=password'), desk.page.keyboard.press('Enter')]);
  await desk.page.waitForLoadState('load');
  await desk.shot('password-changed');
  await assert.doesNotReject(desk.page.getByRole('status').filter({ hasText: 'Your password was changed.' }).waitFor());
  assert.ok(!(await desk.page.content()).includes(fresh), 'the password is not in the page');

  // The old password is refused, the new one signs in.
  const old = await fetch(`${server.url}/v1/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: tess.email, password: tess.password, name: 'old password' }),
  });
  assert.equal(old.status, 401, 'the old password no longer works');
  await Promise.all([desk.page.waitForURL('**/ui/login'), desk.page.getByRole('button', { name: 'Sign out' }).click()]);
  await desk.signIn({ ...tess, password: fresh }, 'new-password-signed-in');
});

test('the users and account pages at phone size fit the screen', async (t) => {
  const admin = await openUi(browser, server, t, { name: 'phone-admin', viewport: PHONE });
  await admin.signIn(server.users.admin);
  await admin.goto('/ui/users', 'users');
  const users = await overflow(admin);
  const invite = await admin.page.getByRole('button', { name: 'Invite' }).boundingBox();
  assert.ok(invite.x >= 0 && invite.x + invite.width <= PHONE.width, 'the Invite button is on screen');

  const mo = await openUi(browser, server, t, { name: 'phone-member', viewport: PHONE });
  await mo.signIn(server.users.member);
  await mo.goto('/ui/account', 'account');
  const account = await overflow(mo);
  const change = await mo.page.getByRole('button', { name: 'Change password' }).boundingBox();
  assert.ok(change.x >= 0 && change.x + change.width <= PHONE.width, 'the Change password button is on screen');

  // Both pages' tables scroll inside their own box; nothing else widens the page (a page wider
  // than the phone is shown zoomed out, with blank space to scroll into).
  const fits = { wide: 0, culprits: [] };
  assert.deepEqual({ users, account }, { users: fits, account: fits }, 'the users and account pages fit a phone');
});
