/**
 * The web console end to end in a real headless Chromium (Debian's chromium,
 * driven by playwright-core): login, RLS, start with live updates, signal,
 * cancel, hostile data, keyboard use, an axe-core scan of every page, and
 * (with DFGATE_UI_SCREENSHOTS=1) the screenshots in docs/ui/.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import pino from 'pino';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';
import { startUi, type UiServer } from '../../src/ui/server.js';

const CHROMIUM = process.env['DFGATE_CHROMIUM'] ?? '/usr/bin/chromium';
const SHOTS = process.env['DFGATE_UI_SCREENSHOTS'] === '1';
const axeSource = readFileSync(
  createRequire(import.meta.url).resolve('axe-core/axe.min.js'),
  'utf8',
);

const db = useTestDatabase();
let ui: UiServer;
let browser: Browser;
let alice: TestRole;
let bob: TestRole;
let base: string;
const dialogs: string[] = [];

beforeAll(async () => {
  const built = spawnSync(process.execPath, [path.resolve('web/build.mjs')], { encoding: 'utf8' });
  if (built.status !== 0) throw new Error(`web build failed: ${built.stderr}`);
  if (!existsSync(CHROMIUM))
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium (or set DFGATE_CHROMIUM)`);
  alice = await db.role('alice');
  bob = await db.role('bob');
  const executor = await startTestExecutor(db.url);
  ui = await startUi({
    listen: { host: '127.0.0.1', port: 0 },
    upstream: db.url,
    log: pino({ level: process.env['DFGATE_TEST_LOG'] ?? 'silent' }),
    executor,
  });
  base = `http://127.0.0.1:${ui.port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
});
afterAll(async () => {
  await browser?.close();
  await ui?.close();
});

async function newPage(
  scheme: 'light' | 'dark' = 'light',
): Promise<{ ctx: BrowserContext; page: Page }> {
  const ctx = await browser.newContext({
    colorScheme: scheme,
    viewport: { width: 1360, height: 900 },
  });
  const page = await ctx.newPage();
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  return { ctx, page };
}

async function logIn(page: Page, role: TestRole): Promise<void> {
  await page.goto(`${base}/`);
  await page.getByLabel('Role').fill(role.name);
  await page.getByLabel('Password').fill(role.password);
  await page.getByLabel('Password').press('Enter');
  await page.getByTestId('role').waitFor();
}

async function axe(page: Page, what: string): Promise<void> {
  await page.evaluate(axeSource);
  const found = await page.evaluate(async () => {
    const w = window as unknown as {
      axe: {
        run: (
          c: Document,
        ) => Promise<{ violations: Array<{ id: string; impact: string; nodes: unknown[] }> }>;
      };
    };
    const r = await w.axe.run(document);
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      at: (v.nodes as Array<{ target: unknown; failureSummary?: string }>)
        .slice(0, 3)
        .map((n) => `${JSON.stringify(n.target)} ${n.failureSummary ?? ''}`),
    }));
  });
  expect(
    found.filter((v) => v.impact === 'serious' || v.impact === 'critical'),
    `axe on ${what}`,
  ).toEqual([]);
}

async function shot(page: Page, name: string): Promise<void> {
  if (!SHOTS) return;
  mkdirSync(path.resolve('docs/ui'), { recursive: true });
  await page.screenshot({ path: path.resolve(`docs/ui/${name}.png`), fullPage: true });
}

async function sql(role: TestRole, q: string, params: unknown[] = []): Promise<string> {
  const c = await db.connect(role.url);
  return (await c.query(q, params)).rows[0].id as string;
}

describe('the console in Chromium', () => {
  it('a wrong password shows a clear error and creates no session', async () => {
    const { ctx, page } = await newPage();
    await page.goto(`${base}/`);
    await axe(page, 'login');
    await shot(page, 'login');
    await page.getByLabel('Role').fill(alice.name);
    await page.getByLabel('Password').fill('not-the-password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await expect
      .poll(() => page.getByTestId('login-error').textContent())
      .toBe('wrong role or password');
    expect(await ctx.cookies()).toEqual([]);
    await ctx.close();
  });

  it("alice sees her instances, not bob's, and bob's URL answers 404", async () => {
    const mine = await sql(alice, `SELECT df.start('SELECT 1 AS one', 'alice-list') AS id`);
    const theirs = await sql(bob, `SELECT df.start('SELECT 2', 'bob-secret') AS id`);
    const { ctx, page } = await newPage();
    await logIn(page, alice);
    await page.locator(`tr[data-id="${mine}"]`).waitFor();
    expect(await page.locator(`tr[data-id="${theirs}"]`).count()).toBe(0);
    expect(await page.content()).not.toContain('bob-secret');
    const res = await page.goto(`${base}/instances/${theirs}`);
    expect(res?.status()).toBe(404);
    await page.getByRole('heading', { name: 'Instance not found' }).waitFor();
    expect(await page.content()).not.toContain('bob-secret');
    await ctx.close();
  });

  it('starts a workflow from the editor and watches its nodes complete without reloading', async () => {
    const { ctx, page } = await newPage();
    await logIn(page, alice);
    await page.getByRole('link', { name: 'Start', exact: true }).click();
    const editor = page.getByLabel(/Workflow/);
    await editor.fill(`'SELECT 1 AS a' ~> df.nope()`);
    await expect
      .poll(() => page.getByTestId('dsl-check').textContent())
      .toMatch(/^line 1, column 20: function df\.nope\(\) does not exist/);
    expect(await page.getByRole('button', { name: 'Start', exact: true }).isDisabled()).toBe(true);
    await editor.fill(
      `'SELECT 1 AS a' |=> 'a' ~> df.sleep(0.4) ~> df.join('SELECT $a.a + 1 AS b', 'SELECT 3 AS c')`,
    );
    await expect.poll(() => page.getByTestId('dsl-check').textContent()).toBe('✓ valid workflow');
    await page.locator('svg.graph g.box').first().waitFor();
    await axe(page, 'start');
    await shot(page, 'start');
    await page.getByLabel('Label').fill('from-the-editor');
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await page.waitForURL(/\/instances\/[0-9a-f]{8}$/);
    const id = page.url().split('/').pop() as string;
    // the first paint shows unfinished steps; the same page then turns them completed
    await page.locator('svg.graph g.box[data-status="completed"]').first().waitFor();
    await expect
      .poll(async () => page.locator('svg.graph g.box:not([data-status="completed"])').count(), {
        timeout: 20_000,
      })
      .toBe(0);
    await expect.poll(() => page.locator('h1 .badge').textContent()).toBe('completed');
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(42);
    expect(await page.getByTestId('instance-label').textContent()).toBe('from-the-editor');
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    await ctx.close();
  });

  it('signals a waiting instance from the keyboard and sees it continue', async () => {
    const id = await sql(
      alice,
      `SELECT df.start('SELECT 1 AS asked' ~> df.wait_for_signal('approve', 3600) |=> 'd' ~> 'SELECT $d AS decision', 'needs-approval') AS id`,
    );
    const { ctx, page } = await newPage();
    await logIn(page, alice);
    await page.goto(`${base}/instances/${id}`);
    await page.locator('.chip', { hasText: 'approve' }).waitFor();
    await axe(page, 'instance');
    await shot(page, 'instance-waiting');
    const signalButton = page.getByRole('button', { name: 'Signal…' });
    await signalButton.focus();
    await page.keyboard.press('Enter');
    await page.getByLabel('Name').fill('approve');
    await page.getByLabel('Payload (JSON)').fill('{"ok": tru');
    await expect
      .poll(() => page.locator('#signal-payload-error').textContent())
      .toMatch(/^not JSON/);
    expect(await page.getByRole('button', { name: 'Send signal' }).isDisabled()).toBe(true);
    await page.getByLabel('Payload (JSON)').fill('{"ok": true, "by": "<b>alice</b>"}');
    await page.getByLabel('Payload (JSON)').focus();
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter');
    await expect
      .poll(() => page.locator('h1 .badge').textContent(), { timeout: 20_000 })
      .toBe('completed');
    await page.locator('td', { hasText: '"by": "<b>alice</b>"' }).waitFor();
    // keyboard: focus the last step of the graph and open it
    const last = page.locator('svg.graph g.box').last();
    await last.focus();
    await page.keyboard.press('Enter');
    await page.getByTestId('node-panel').waitFor();
    await shot(page, 'instance');
    await ctx.close();
  });

  it('cancels a looping instance after confirming', async () => {
    const id = await sql(alice, `SELECT df.start(@> df.sleep(0.2), 'looping') AS id`);
    const { ctx, page } = await newPage();
    await logIn(page, alice);
    await page.goto(`${base}/instances/${id}`);
    await page.locator('svg.graph g.box.loop').waitFor();
    await expect
      .poll(() => page.locator('svg.graph g.box.loop text.detail').textContent(), {
        timeout: 10_000,
      })
      .toMatch(/^iteration [2-9]|^iteration \d\d/);
    await page.getByRole('button', { name: 'Cancel…' }).click();
    await page.getByRole('button', { name: 'Yes, cancel it' }).focus();
    await page.keyboard.press('Enter');
    await expect
      .poll(() => page.locator('h1 .badge').textContent(), { timeout: 20_000 })
      .toBe('cancelled');
    const c = await db.connect(alice.url);
    expect(await finished(c, id)).toMatchObject({ status: 'cancelled' });
    await ctx.close();
  });

  it('renders hostile labels and results as text and runs nothing', async () => {
    const hostile = '<img src=x onerror=alert(1)>';
    const id = await sql(
      alice,
      `SELECT df.start($$SELECT '<script>alert(2)</script>' AS x, '<img src=y onerror=alert(3)>' AS y$$, $1) AS id`,
      [hostile],
    );
    const c = await db.connect(alice.url);
    await finished(c, id);
    const { ctx, page } = await newPage();
    const cspErrors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') cspErrors.push(m.text());
    });
    await logIn(page, alice);
    const row = page.locator(`tr[data-id="${id}"]`);
    await row.waitFor();
    expect(await row.locator('.label-cell').textContent()).toBe(hostile);
    await axe(page, 'instances');
    await shot(page, 'instances');
    await page.goto(`${base}/instances/${id}`);
    expect(await page.getByTestId('instance-label').textContent()).toBe(hostile);
    await page.locator('svg.graph g.box').first().click();
    await expect
      .poll(() => page.getByTestId('node-result').textContent())
      .toContain('<script>alert(2)</script>');
    expect(await page.locator('main img').count()).toBe(0);
    expect(await page.locator('main script').count()).toBe(0);
    expect(dialogs).toEqual([]);
    expect(cspErrors.filter((e) => /Content Security Policy/i.test(e))).toEqual([]);
    await ctx.close();
  });

  it('shows the overview with charts, counts and executor health', async () => {
    for (const scheme of ['light', 'dark'] as const) {
      const { ctx, page } = await newPage(scheme);
      await logIn(page, alice);
      await page.getByRole('link', { name: 'Overview' }).click();
      await page.locator('.uplot').first().waitFor();
      expect(await page.locator('.uplot').count()).toBe(2);
      await page.getByText(/^up, driving/).waitFor();
      await axe(page, `overview (${scheme})`);
      await shot(page, scheme === 'light' ? 'overview' : 'overview-dark');
      if (scheme === 'dark') {
        await page.getByRole('link', { name: 'Instances' }).click();
        await page.locator('tr[data-id]').first().waitFor();
        await axe(page, 'instances (dark)');
        await shot(page, 'instances-dark');
      }
      await ctx.close();
    }
  });

  it('logs out from the keyboard; the session is gone', async () => {
    const { ctx, page } = await newPage();
    await logIn(page, alice);
    await page.getByRole('button', { name: 'Log out' }).focus();
    await page.keyboard.press('Enter');
    await page.getByLabel('Password').waitFor();
    const r = await page.evaluate(async () => (await fetch('/api/instances')).status);
    expect(r).toBe(401);
    await ctx.close();
  });
});
