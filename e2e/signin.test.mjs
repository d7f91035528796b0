// Signing in and out of the console: the form, its error messages, the keyboard, the limit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openUi, PHONE } from './helpers.mjs';

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

test('sign in: a wrong password is told on the page, the right one opens the key list', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'sign-in' });
  const { admin } = server.users;
  await ui.goto('/ui', 'start');
  assert.match(ui.page.url(), /\/ui\/login$/, 'a visitor without a session is sent to sign in');

  await ui.page.getByLabel('Email').fill(admin.email);
  await ui.page.getByLabel('Password').fill('not the password at all');
  const [res] = await Promise.all([
    ui.page.waitForResponse((r) => r.url().endsWith('/ui/login') && r.request().method() === 'POST'),
    ui.page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  await ui.page.waitForLoadState('load');
  await ui.shot('wrong-password');
  assert.equal(res.status(), 401);
  await assert.doesNotReject(ui.page.getByRole('alert').filter({ hasText: 'The email or the password is not right.' }).waitFor());
  assert.equal(await ui.page.getByLabel('Email').inputValue(), admin.email, 'the email typed is kept');
  assert.equal(await ui.page.getByLabel('Password').inputValue(), '', 'the password is not sent back');
  assert.ok(!(await ui.page.content()).includes('not the password at all'), 'the wrong password is not in the page');

  await ui.page.getByLabel('Password').fill(admin.password);
  await Promise.all([ui.page.waitForURL('**/ui/keys'), ui.page.getByRole('button', { name: 'Sign in' }).click()]);
  await ui.shot('signed-in');
  await assert.doesNotReject(ui.page.getByRole('heading', { name: 'API keys' }).waitFor());
  assert.match(await ui.page.locator('header .who').innerText(), /Ada Admin/);
  const cookie = (await ui.context.cookies()).find((c) => c.name === 'latchkey_session');
  assert.ok(cookie, 'the session cookie is set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
});

test('sign out ends the session', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'sign-out' });
  await ui.signIn(server.users.member);
  const before = (await ui.context.cookies()).find((c) => c.name === 'latchkey_session').value;
  await Promise.all([ui.page.waitForURL('**/ui/login'), ui.page.getByRole('button', { name: 'Sign out' }).click()]);
  await ui.shot('signed-out');
  await ui.goto('/ui/keys', 'keys-after');
  assert.match(ui.page.url(), /\/ui\/login$/, 'the key list needs a new sign-in');
  // The old session id no longer opens anything, even if a copy of the cookie survived.
  await ui.context.addCookies([{ name: 'latchkey_session', value: before, url: server.url }]);
  await ui.goto('/ui/keys', 'old-cookie');
  assert.match(ui.page.url(), /\/ui\/login$/);
});

test('the sign-in form works with the keyboard alone (Tab and Enter)', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'keyboard' });
  const { member } = server.users;
  await ui.goto('/ui/login', 'login');
  const focused = () => ui.page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
  assert.equal(await focused(), 'email', 'the email field has the focus when the page opens');
  await ui.page.keyboard.type(member.email);
  await ui.page.keyboard.press('Tab');
  assert.equal(await focused(), 'password', 'Tab goes from the email to the password');
  await ui.page.keyboard.type(member.password);
  await ui.shot('typed');
  await Promise.all([ui.page.waitForURL('**/ui/keys'), ui.page.keyboard.press('Enter')]);
  await ui.shot('signed-in');
  await assert.doesNotReject(ui.page.getByRole('heading', { name: 'API keys' }).waitFor());
  // The first Tab on a signed-in page reaches the skip link, and it shows itself.
  await ui.page.keyboard.press('Tab');
  const skip = ui.page.getByRole('link', { name: 'Skip to content' });
  assert.equal(await skip.evaluate((el) => el === document.activeElement), true);
  const box = await skip.boundingBox();
  assert.ok(box && box.x >= 0 && box.y >= 0, `the focused skip link is on screen (${JSON.stringify(box)})`);
  await ui.shot('skip-link');
});

test('sign-in page at phone size', async (t) => {
  const ui = await openUi(browser, server, t, { name: 'phone-login', viewport: PHONE });
  await ui.goto('/ui/login', 'login');
  const overflow = await ui.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.equal(overflow, 0, 'nothing sticks out sideways');
  const button = await ui.page.getByRole('button', { name: 'Sign in' }).boundingBox();
  assert.ok(button.y + button.height <= PHONE.height, 'the sign-in button is on the first screen');
});

test('the 6th sign-in attempt in 15 minutes is refused with the rate-limit message', async (t) => {
  // A server of its own, with the limit people get by default: 5 per 15 minutes per address.
  const limited = await startServer({ users: { member: server.users.member }, loginLimit: 5 });
  t.after(() => limited.stop());
  const ui = await openUi(browser, limited, t, { name: 'rate-limit' });
  const { member } = limited.users;
  await ui.goto('/ui/login', 'login');
  const attempt = async (password, step) => {
    await ui.page.getByLabel('Email').fill(member.email);
    await ui.page.getByLabel('Password').fill(password);
    const [res] = await Promise.all([
      ui.page.waitForResponse((r) => r.url().endsWith('/ui/login') && r.request().method() === 'POST'),
      ui.page.getByRole('button', { name: 'Sign in' }).click(),
    ]);
    await ui.page.waitForLoadState('load');
    await ui.shot(step);
    return { status: res.status(), alert: await ui.page.locator('#login-error').innerText().catch(() => '') };
  };
  for (let i = 1; i <= 5; i++) {
    const r = await attempt(`wrong password number ${i}`, `attempt-${i}`);
    assert.equal(r.status, 401, `attempt ${i} is judged, not limited`);
    assert.equal(r.alert, 'The email or the password is not right.');
  }
  // The sixth is refused before the password is looked at: even the right one.
  const sixth = await attempt(member.password, 'attempt-6');
  assert.equal(sixth.status, 429);
  assert.match(sixth.alert, /^Too many sign-in attempts from your address\. Try again in \d+ minutes?\.$/);
  assert.match(ui.page.url(), /\/ui\/login$/, 'still on the sign-in page');
  assert.equal((await ui.context.cookies()).some((c) => c.name === 'latchkey_session'), false, 'no session');
});
