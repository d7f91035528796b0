// Shared pieces of the browser tests: the real `latchkey serve` on a fresh SQLite file with its
// users made first (`latchkey user create --password-stdin`), Debian's Chromium driven by
// playwright-core, and a `Ui` per page that screenshots every page it visits into
// target/e2e-screenshots/<test>-<step>-<viewport>.png.
//
// A new test file:
//
//   import { test, before, after } from 'node:test';
//   import { startServer, launchBrowser, openUi } from './helpers.mjs';
//   let server, browser;
//   before(async () => { server = await startServer(); browser = await launchBrowser(); });
//   after(async () => { await browser?.close(); await server?.stop(); });
//   test('my flow', async (t) => {
//     const ui = await openUi(browser, server, t);          // 1280x800; { viewport: PHONE } too
//     await ui.signIn(server.users.admin);
//     await ui.goto('/ui/users', 'list');                   // screenshot "my-flow-list-1280x800"
//     ...
//   });
//
// Server users are `admin`, `member` and `other` (a second member) unless `users` is given.

import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The binary under test: `LATCHKEY_BIN`, or the debug build `cargo build` / `cargo test` makes. */
export const BIN = path.resolve(ROOT, process.env.LATCHKEY_BIN || 'target/debug/latchkey');

/** Where every screenshot goes, and each server's log (server-<port>.log) when it stops. */
export const SHOTS = path.resolve(ROOT, process.env.LATCHKEY_E2E_SHOTS || 'target/e2e-screenshots');

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** The users most tests want: an admin and two members of the same org. */
export const DEFAULT_USERS = {
  admin: { email: 'ada@example.test', name: 'Ada Admin', role: 'admin', password: 'admin passphrase for the e2e suite' },
  member: { email: 'mo@example.test', name: 'Mo Member', role: 'member', password: 'member passphrase for the e2e suite' },
  other: { email: 'olu@example.test', name: 'Olu Other', role: 'member', password: 'other passphrase for the e2e suite' },
};

/** Runs `latchkey ARGS`, writing `stdin` to it; resolves with its output, rejects on failure. */
export function run(args, { stdin = '', env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve({ stdout: out, stderr: err });
      else reject(new Error(`latchkey ${args.slice(0, 2).join(' ')} exited ${code}:\n${err}${out}`));
    });
    child.stdin.end(stdin);
  });
}

/** Creates a user straight in the database, its password given on stdin. */
export async function createUser(databaseUrl, { email, name, role = 'member', password }) {
  await run(
    ['user', 'create', '--database-url', databaseUrl, '--email', email, '--name', name, '--role', role, '--password-stdin'],
    { stdin: `${password}\n` },
  );
}

const running = new Set();
process.on('exit', () => { for (const c of running) c.kill('SIGKILL'); });

/** A loopback port nothing listens on (asked of the OS, then let go). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `latchkey serve` on a free loopback port with a fresh SQLite database in a temp dir,
 * after creating `users` (a map name -> { email, name, role, password }) in it.
 *
 * `loginLimit` is `--rate-limit-login-per-15m` (0: off, the default here); `args` are more flags
 * (the other limits keep their defaults: people mint at most 10 keys an hour per address, so a
 * file that makes more passes `args: ['--rate-limit-mint-per-hour', '0']`).
 * `publicUrl: true` listens on a port picked beforehand and passes it as `--public-url`, so the
 * setup links the server hands out (invites) point at it.
 * Resolves with { url, origin, databaseUrl, dir, users, log(), stop() }; stop() also writes the
 * server's log to SHOTS/server-<port>.log.
 */
export async function startServer({ users = DEFAULT_USERS, loginLimit = 0, args = [], publicUrl = false } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'latchkey-e2e-'));
  const databaseUrl = `sqlite://${dir}/db.sqlite`;
  // One at a time: the first creates the database and the org.
  for (const u of Object.values(users)) await createUser(databaseUrl, u);
  // Setup links are built from --public-url, so a server that hands them out listens on a port
  // chosen here (free a moment ago) and is told that this is its address.
  let listen = '127.0.0.1:0';
  if (publicUrl) {
    const port = await freePort();
    listen = `127.0.0.1:${port}`;
    args = ['--public-url', `http://${listen}`, ...args];
  }

  const child = spawn(
    BIN,
    [
      'serve', '--listen', listen, '--plain-http', '--log-format', 'json',
      '--database-url', databaseUrl, '--rate-limit-login-per-15m', String(loginLimit), ...args,
    ],
    { env: { ...process.env, LATCHKEY_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  let stderr = '';
  let stdout = '';
  child.stdout.on('data', (d) => { stdout += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => { running.delete(child); resolve({ code, signal }); }));

  const address = await new Promise((resolve, reject) => {
    let pending = '';
    const timer = setTimeout(() => reject(new Error(`latchkey serve did not log "listening" in 20 s:\n${stderr}`)), 20_000);
    child.stderr.on('data', (d) => {
      stderr += d;
      pending += d;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let rec;
        try { rec = JSON.parse(line); } catch { continue; }
        if (rec?.fields?.message === 'listening' && rec.fields.address) {
          clearTimeout(timer);
          resolve(rec.fields.address);
        }
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`latchkey serve exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  });

  const url = `http://${address}`;
  return {
    url,
    origin: url,
    databaseUrl,
    dir,
    users,
    /** Everything the server wrote so far (stderr, then stdout). */
    log: () => stderr + stdout,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(t);
      }
      await mkdir(SHOTS, { recursive: true });
      await writeFile(path.join(SHOTS, `server-${address.split(':').pop()}.log`), stderr + stdout);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium, headless. `LATCHKEY_CHROMIUM` overrides the path. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.LATCHKEY_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-sync', '--disable-gpu', '--disable-quic',
    ],
  });
}

/** A file-name-safe form of a test's name. */
export function slug(s) {
  return String(s).toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);
}

/**
 * One browser context (its own cookies) and page for a test, at `viewport`, closed when the test
 * ends; `name` names its screenshots (default: the test's name), `permissions` are granted for
 * the server's origin (e.g. 'clipboard-read'). Every dialog (confirm(), beforeunload) is recorded in `ui.dialogs` and accepted unless
 * `ui.answerDialog` is set to a function returning false for it.
 */
export async function openUi(browser, server, t, { viewport = DESKTOP, name, permissions = [] } = {}) {
  // A phone-sized viewport is a phone: touch, and the page's meta viewport honoured.
  const phone = viewport.width < 600;
  const context = await browser.newContext({ viewport, hasTouch: phone, isMobile: phone });
  if (permissions.length) await context.grantPermissions(permissions, { origin: server.origin });
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(15_000);
  const page = await context.newPage();
  const ui = new Ui(page, context, server, name ?? slug(t.name), `${viewport.width}x${viewport.height}`);
  t.after(() => context.close());
  return ui;
}

export class Ui {
  constructor(page, context, server, testName, viewportName) {
    this.page = page;
    this.context = context;
    this.server = server;
    this.testName = testName;
    this.viewportName = viewportName;
    this.dialogs = [];
    this.answerDialog = null;
    this.shots = [];
    page.on('dialog', async (d) => {
      this.dialogs.push({ type: d.type(), message: d.message() });
      const yes = this.answerDialog ? this.answerDialog(d) !== false : true;
      await (yes ? d.accept() : d.dismiss()).catch(() => {});
    });
  }

  /** Screenshots the whole page as <test>-<step>-<viewport>.png. */
  async shot(step) {
    await mkdir(SHOTS, { recursive: true });
    const file = path.join(SHOTS, `${this.testName}-${slug(step)}-${this.viewportName}.png`);
    await this.page.screenshot({ path: file, fullPage: true });
    this.shots.push(file);
    return file;
  }

  /** Opens a console path (or a full URL), screenshots it, and returns the response. */
  async goto(where, step) {
    const res = await this.page.goto(where.startsWith('http') ? where : this.server.url + where);
    await this.shot(step ?? (where.replace(/^\/ui\/?/, '') || 'root'));
    return res;
  }

  /** The visible text of the page. */
  text() {
    return this.page.locator('body').innerText();
  }

  /** Signs in through the form and lands on the key list. */
  async signIn(user, step = 'signed-in') {
    await this.goto('/ui/login', 'login');
    await this.page.getByLabel('Email').fill(user.email);
    await this.page.getByLabel('Password').fill(user.password);
    await Promise.all([
      this.page.waitForURL('**/ui/keys'),
      this.page.getByRole('button', { name: 'Sign in' }).click(),
    ]);
    await this.shot(step);
  }

  /**
   * Creates a key through the form: `scopes` ticked by name, `expiry` a preset value ("7", "30",
   * "60", "90", "none"). Lands on the page showing the secret once; resolves with its plaintext
   * (read from the field) and the new key's id.
   */
  async createKey({ name, scopes = [], expiry = '30', step = 'new-key' }) {
    await this.goto('/ui/keys/new', step);
    await this.page.getByLabel('Name').fill(name);
    for (const s of scopes) await this.page.locator(`input[type=checkbox][name=scope][value="${s}"]`).check();
    await this.page.locator(`input[type=radio][name=expiry][value="${expiry}"]`).check();
    await this.shot(`${step}-filled`);
    const [res] = await Promise.all([
      this.page.waitForResponse((r) => r.url().endsWith('/ui/keys/new') && r.request().method() === 'POST'),
      this.page.getByRole('button', { name: 'Create key' }).click(),
    ]);
    await this.page.waitForLoadState('load');
    await this.shot(`${step}-created`);
    if (res.status() !== 201) throw new Error(`creating key ${name}: status ${res.status()}: ${await this.text()}`);
    const plaintext = await this.page.locator('#plaintext').inputValue();
    return { plaintext, id: await this.keyIdOnSecretPage() };
  }

  /** On a page showing a secret: the id of the key it is about (from "go to the key"). */
  async keyIdOnSecretPage() {
    const href = await this.page.locator('a[data-leave][href^="/ui/keys/"]').first().getAttribute('href');
    return href.split('/').pop();
  }

  /** The session's CSRF token, as the pages' forms carry it. */
  csrfToken() {
    return this.page.locator('input[name=csrf_token]').first().inputValue();
  }
}

/** POST /v1/tokens/verify: resolves with { status, body }. */
export async function verifyToken(server, token) {
  const res = await fetch(`${server.url}/v1/tokens/verify`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token }),
  });
  return { status: res.status, body: await res.json() };
}

/** Trades a user's password for a token over REST (POST /v1/auth/token). */
export async function apiToken(server, user, { name = `e2e ${Date.now()}`, scopes } = {}) {
  const res = await fetch(`${server.url}/v1/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: user.email, password: user.password, name, ...(scopes ? { scopes } : {}) }),
  });
  const body = await res.json();
  if (res.status !== 201) throw new Error(`POST /v1/auth/token: ${res.status} ${JSON.stringify(body)}`);
  return body;
}
