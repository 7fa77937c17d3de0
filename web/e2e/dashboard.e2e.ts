// End-to-end: a real `cmdx dev` with one sandboxed agent, driven through headless Chromium.
// Covers the dashboard's "Must show" list; screenshots land in e2e/artifacts/.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_EMAIL,
  ADMIN_PASSWORD,
  ARTIFACTS,
  launchBrowser,
  newPage,
  screenshot,
  signIn,
  startHub,
  terminalText,
  waitFor,
  type Hub,
} from './harness';
import { makeZip } from './zip';

const COLOUR_LOOP = "ls; for i in $(seq 1 20); do printf '\\033[32mline %s\\033[0m\\n' $i; sleep 0.1; done";
const USER_EMAIL = 'second@cmdx.test';
const USER_PASSWORD = 'second-password-e2e';

let hub: Hub;
let browser: Browser;
let page: Page;
let errors: string[];
let firstJobUrl = '';
let artifactUrl = '';

async function badge(p: Page): Promise<string> {
  return (await p.locator('.page-header .badge').first().getAttribute('data-status')) ?? '';
}

async function submitFromForm(p: Page, command: string): Promise<string> {
  await p.getByRole('link', { name: 'New job', exact: true }).first().click();
  await p.getByRole('heading', { name: 'New job' }).waitFor();
  await p.getByLabel('Command').fill(command);
  await p.getByRole('button', { name: 'Run', exact: true }).click();
  await p.waitForURL(/\/jobs\/(?!new)[^/]+$/);
  return p.url();
}

describe('dashboard against cmdx dev', () => {
  beforeAll(async () => {
    hub = await startHub();
    browser = await launchBrowser();
    ({ page, errors } = await newPage(browser, hub.url));
  });

  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
  });

  it('signs in, showing an error in place for a wrong password', async () => {
    await page.goto('/');
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.getByLabel('Email').fill(ADMIN_EMAIL);
    await page.getByLabel('Password').fill('wrong-password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'Wrong email or password' }).waitFor();
    await screenshot(page, '01-sign-in-error');
    await page.getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Jobs', exact: true }).waitFor();
    await page.getByText('Live', { exact: true }).waitFor();
    await page.getByText('No jobs yet').waitFor();
    await screenshot(page, '02-jobs-empty');
  });

  it('lists a worker', async () => {
    await page.getByRole('link', { name: 'Workers' }).click();
    await page.getByRole('heading', { name: 'Workers' }).waitFor();
    await page.locator('.workers-table tbody tr .badge-worker-online').first().waitFor({ timeout: 60_000 });
    expect(await page.locator('.workers-table tbody tr').count()).toBeGreaterThanOrEqual(1);
    await screenshot(page, '03-workers');
  });

  it('drains a worker until resumed, then removes it, after which its agent enrols afresh', async () => {
    const row = page.locator('.workers-table tbody tr[data-worker-id="dev-agent-0"]');
    await row.getByRole('button', { name: 'Drain dev-agent-0' }).click();
    await page.getByRole('status').filter({ hasText: 'dev-agent-0 is drained' }).waitFor();
    await row.locator('.badge-worker-draining').waitFor();
    await row.getByText(`drained by ${ADMIN_EMAIL}`).waitFor();
    await page.getByText('1 draining', { exact: false }).waitFor();
    await screenshot(page, '03-worker-drained');
    // A job submitted now waits: its only worker takes no new jobs.
    const submitted = await page.evaluate(async () => {
      const r = await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command: 'echo after-drain' }),
      });
      return (await r.json()) as { jobId: string };
    });
    const status = () =>
      page.evaluate(
        async (id) => ((await (await fetch(`/api/jobs/status?jobId=${id}`)).json()) as { status: string }).status,
        submitted.jobId,
      );
    await new Promise((r) => setTimeout(r, 1000));
    expect(await status()).toBe('queued');
    // Resumed, it runs the job.
    await row.getByRole('button', { name: 'Resume dev-agent-0' }).click();
    await page.getByRole('status').filter({ hasText: 'dev-agent-0 takes jobs again' }).waitFor();
    await expect.poll(status, { timeout: 30_000 }).toBe('completed');
    await row.locator('.badge-worker-online').waitFor();
    expect(await row.locator('.drained').count()).toBe(0);

    // Drained and removed: the agent reconnects with its token and enrols afresh, not drained.
    await row.getByRole('button', { name: 'Drain dev-agent-0' }).click();
    await row.locator('.badge-worker-draining').waitFor();
    await row.getByRole('button', { name: 'Remove dev-agent-0' }).click();
    await row.getByRole('group', { name: 'Remove dev-agent-0?' }).getByRole('button', { name: 'Remove dev-agent-0' }).click();
    await page.getByRole('status').filter({ hasText: 'dev-agent-0 removed' }).waitFor();
    await expect
      .poll(
        () =>
          page.evaluate(async () => {
            const r = (await (await fetch('/api/workers/list')).json()) as {
              workers: { workerId: string; status: string; drainedBy?: string }[];
            };
            const w = r.workers.find((x) => x.workerId === 'dev-agent-0');
            return w ? `${w.status} ${w.drainedBy ?? 'not drained'}` : 'missing';
          }),
        { timeout: 30_000 },
      )
      .toBe('online not drained');
    await page.reload();
    await page.locator('.workers-table tbody tr[data-worker-id="dev-agent-0"] .badge-worker-online').waitFor();
  });

  it('uploads a ZIP, runs the colour loop and shows lines live and in green', async () => {
    await page.getByRole('link', { name: 'New job', exact: true }).first().click();
    await page.getByRole('heading', { name: 'New job' }).waitFor();
    const zip = makeZip({ 'hello.txt': 'hello from the zip\n', 'src/main.sh': 'echo main\n' });
    await page.getByLabel('Project ZIP').setInputFiles({ name: 'project.zip', mimeType: 'application/zip', buffer: zip });
    await page.getByText('uploaded', { exact: false }).waitFor();
    await page.getByLabel('Command').fill(COLOUR_LOOP);
    await page.getByLabel('Timeout (seconds)').fill('120');
    await screenshot(page, '04-new-job');
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    await page.waitForURL(/\/jobs\/(?!new)[^/]+$/);
    firstJobUrl = page.url();

    // Lines appear while the job is still running (live, not after the fact).
    let sawLiveLine = false;
    await waitFor(
      'output lines while the job runs',
      async () => {
        const text = await terminalText(page);
        const status = await badge(page);
        if (/line [2-9]\b/.test(text) && (status === 'running' || status === 'assigned')) sawLiveLine = true;
        return sawLiveLine || status === 'completed';
      },
      60_000,
    );
    expect(sawLiveLine, 'a line was visible while the job was running').toBe(true);

    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    await waitFor('line 20', async () => (await terminalText(page)).includes('line 20'));
    // The whole log (the "Download log" link) has the ZIP's files listed by `ls`.
    const href = await page.getByRole('link', { name: 'Download log' }).getAttribute('href');
    const log = await page.evaluate(async (u) => (await fetch(u!)).text(), href);
    expect(log).toContain('hello.txt');
    expect(log).toContain('\x1b[32mline 20\x1b[0m');
    // ANSI green (colour 2) is rendered as the xterm-fg-2 class.
    const green = page.locator('.term-host .xterm-rows span.xterm-fg-2', { hasText: 'line 20' });
    expect(await green.count()).toBeGreaterThanOrEqual(1);
    await expect
      .poll(async () => page.locator('.fact', { hasText: 'Exit code' }).locator('dd').innerText())
      .toBe('0');
    await screenshot(page, '05-job-completed');
    mkdirSync(join(ARTIFACTS), { recursive: true });
  });

  // The harness starts the hub with a 2 MiB upload limit (CMDX_MAX_UPLOAD_BYTES): a 3 MB ZIP
  // must be refused with the message shown in place.
  const oversizeMb = Number(process.env.CMDX_E2E_OVERSIZE_MB ?? 3);
  it('shows an upload that is too large in place', async () => {
    await page.getByRole('link', { name: 'New job', exact: true }).first().click();
    await page.getByRole('heading', { name: 'New job' }).waitFor();
    const big = makeZip({ 'big.bin': new Uint8Array(oversizeMb * 1024 * 1024) });
    await page.getByLabel('Project ZIP').setInputFiles({ name: 'big.zip', mimeType: 'application/zip', buffer: big });
    await page.getByRole('alert').filter({ hasText: /too large|larger than/i }).waitFor({ timeout: 60_000 });
    await screenshot(page, '04b-upload-too-large');
  });

  it('updates the jobs table live and searches by command', async () => {
    await page.getByRole('link', { name: 'Jobs', exact: true }).click();
    await page.getByRole('heading', { name: 'Jobs', exact: true }).waitFor();
    await page.locator('.jobs-table tbody tr').first().waitFor();
    // Submit through the API from the page; the row must appear and finish without a reload.
    const jobId = await page.evaluate(async () => {
      const r = await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command: 'echo live-row; sleep 1' }),
      });
      return ((await r.json()) as { jobId: string }).jobId;
    });
    const row = page.locator(`.jobs-table tr[data-job-id="${jobId}"]`);
    await row.waitFor({ timeout: 30_000 });
    await row.locator('.badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    await screenshot(page, '06-jobs-live');

    await page.getByLabel('Search commands').fill('live-row');
    await expect.poll(async () => page.locator('.jobs-table tbody tr').count(), { timeout: 10_000 }).toBe(1);
    await page.getByLabel('Search commands').fill('');
    await page.getByLabel('Status').selectOption('completed');
    await expect
      .poll(async () => page.locator('.jobs-table tbody tr .badge[data-status="completed"]').count())
      .toBeGreaterThanOrEqual(2);
    await page.getByLabel('Status').selectOption('');
  });

  it('runs a job at the priority the form gives, refusing one out of range in place', async () => {
    await page.getByRole('link', { name: 'New job', exact: true }).first().click();
    await page.getByRole('heading', { name: 'New job' }).waitFor();
    await page.getByLabel('Command').fill('echo prioritised');
    await page.getByLabel('Priority').fill('101');
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    await page.getByText('Priority must be between -100 and 100').waitFor();
    expect(page.url()).toMatch(/\/jobs\/new/);
    await page.getByLabel('Priority').fill('7');
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    await page.waitForURL(/\/jobs\/(?!new)[^/]+$/);
    const fact = page.locator('.facts dt', { hasText: /^Priority$/ }).locator('xpath=following-sibling::dd[1]');
    await expect.poll(async () => (await fact.textContent())?.trim(), { timeout: 10_000 }).toBe('7');
  });

  it('cancels a long job', async () => {
    await submitFromForm(page, 'echo started; sleep 600');
    await page.locator('.page-header .badge[data-status="running"]').waitFor({ timeout: 60_000 });
    await waitFor('first output', async () => (await terminalText(page)).includes('started'));
    await page.getByRole('button', { name: 'Cancel' }).click();
    await page.locator('.page-header .badge[data-status="cancelled"]').waitFor({ timeout: 60_000 });
    await expect.poll(async () => page.getByRole('button', { name: 'Cancel' }).count()).toBe(0);
    await screenshot(page, '07-job-cancelled');
  });

  it('runs a job from the form with env values and on pipes, showing the names only', async () => {
    await page.goto('/jobs/new');
    await page.getByLabel('Command').fill('printf "%s|%s\\n" "$GREETING" "$EMPTY"; test -t 1 && echo tty || echo pipes; echo to-stderr >&2');
    const env = page.getByLabel(/^Environment/);
    await env.fill('GREETING=hello world\nnot a variable');
    await page.getByRole('button', { name: 'Run' }).click();
    await page.getByText('Line 2: write NAME=value').waitFor();
    await env.fill('# comment\nGREETING=hello world\nEMPTY=');
    await page.getByLabel('Run in a terminal').uncheck();
    await page.getByRole('button', { name: 'Run' }).click();
    await page.waitForURL((url) => /^\/jobs\/[^/]+$/.test(url.pathname) && !url.pathname.endsWith('/new'));
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    const jobId = decodeURIComponent(new URL(page.url()).pathname.split('/').pop()!);
    const job = await page.evaluate(
      async (id) => (await (await fetch(`/api/jobs/status?jobId=${id}`)).json()) as Record<string, unknown>,
      jobId,
    );
    expect(job.stdout).toBe('hello world|\npipes\n');
    expect(job.stderr).toBe('to-stderr\n');
    expect(job.ttySize).toBeNull();
    // The page names the variables, never their values.
    const facts = (await page.locator('.facts').textContent()) ?? '';
    expect(facts).toContain('EMPTY, GREETING');
    expect(facts).not.toContain('hello world');
    await page.getByText('The job writes to pipes, not a terminal.').waitFor();
    // Edit and run copies the choices it can; the values it cannot are asked for again.
    await page.getByRole('link', { name: 'Edit and run' }).click();
    await page.getByText('The job this copies set EMPTY, GREETING: enter their values again').waitFor();
    expect(await page.getByLabel('Run in a terminal').isChecked()).toBe(false);
    expect(await page.getByLabel(/^Environment/).inputValue()).toBe('');
  });

  it('runs a job again with its env values, which the page never sees', async () => {
    const jobId = await page.evaluate(async () => {
      const r = await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command: 'echo "value=$GREETING"', env: { GREETING: 'hidden-hello' } }),
      });
      return ((await r.json()) as { jobId: string }).jobId;
    });
    await page.goto(`/jobs/${encodeURIComponent(jobId)}`);
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    await page.getByRole('button', { name: 'Run again' }).click();
    await page.waitForURL((url) => url.pathname.startsWith('/jobs/') && !url.pathname.endsWith(jobId));
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    await waitFor('the rerun to print the env value', async () =>
      (await terminalText(page)).includes('value=hidden-hello'),
    );
  });

  it('lists a job’s artifacts and downloads them', async () => {
    // Through the API (the page's cookie authenticates): two files kept, a symlink skipped.
    const jobId = await page.evaluate(async () => {
      const r = await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          command:
            "mkdir -p dist reports && printf 'built\\n' > dist/app.txt && printf '\\000\\001\\377' > dist/bin.dat" +
            " && echo '<r/>' > reports/r.xml && ln -s /etc/passwd dist/passwd && sleep 3",
          artifacts: ['dist/**', 'reports/*.xml'],
        }),
      });
      return ((await r.json()) as { jobId: string }).jobId;
    });
    await page.goto(`/jobs/${encodeURIComponent(jobId)}`);
    const card = page.getByRole('region', { name: 'Artifacts' });
    // The patterns show while the job runs, then the files once it has ended.
    await card.getByText('are collected when the job ends.').waitFor();
    await card.getByText('dist/**', { exact: true }).waitFor();
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    const rows = card.locator('.artifacts-table tbody tr');
    await expect.poll(async () => rows.count(), { timeout: 10_000 }).toBe(3);
    expect(await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-path')))).toEqual([
      'dist/app.txt',
      'dist/bin.dat',
      'reports/r.xml',
    ]);
    const app = card.locator('tr[data-path="dist/app.txt"]');
    expect(await app.locator('td').nth(1).innerText()).toBe('6 B');
    // sha256 of "built\n", shortened.
    expect(await app.locator('td').nth(2).innerText()).toBe('56f6e6304d02');
    await card.getByText('Skipped: 1 path').waitFor();
    await card.getByText('dist/passwd', { exact: true }).waitFor();
    await card.scrollIntoViewIfNeeded();
    await screenshot(page, '07b-job-artifacts');

    // A click on a file's link downloads exactly what the job wrote.
    const link = card.getByRole('link', { name: 'Download dist/bin.dat' });
    artifactUrl = (await link.getAttribute('href'))!;
    const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
    expect(download.suggestedFilename()).toBe('bin.dat');
    expect([...readFileSync((await download.path())!)]).toEqual([0, 1, 255]);
    // The whole ZIP holds the three files.
    const zipHref = await card.getByRole('link', { name: 'Download all (ZIP)' }).getAttribute('href');
    const zip = await page.evaluate(async (u) => {
      const r = await fetch(u!);
      return { status: r.status, type: r.headers.get('content-type'), text: new TextDecoder('latin1').decode(await r.arrayBuffer()) };
    }, zipHref);
    expect(zip.status).toBe(200);
    expect(zip.type).toBe('application/zip');
    expect(zip.text.startsWith('PK')).toBe(true);
    for (const name of ['dist/app.txt', 'dist/bin.dat', 'reports/r.xml']) expect(zip.text).toContain(name);
    expect(zip.text).not.toContain('dist/passwd');
  });

  it('adds a user and mints a worker token shown once', async () => {
    await page.getByRole('link', { name: 'Admin' }).click();
    await page.getByRole('heading', { name: 'Admin' }).waitFor();
    await page.getByLabel('New user email').fill(USER_EMAIL);
    await page.getByLabel('New user password').fill(USER_PASSWORD);
    await page.getByRole('button', { name: 'Add user' }).click();
    await page.getByRole('status').filter({ hasText: `Added ${USER_EMAIL}` }).waitFor();
    await page.getByRole('cell', { name: USER_EMAIL }).waitFor();

    // The page tells how to start an agent without the token on its command line.
    const tokens = page.locator('section', { has: page.getByRole('heading', { name: 'Worker tokens' }) });
    const howto = (await tokens.locator('p').first().textContent()) ?? '';
    expect(howto).toContain(`CMDX_AGENT_TOKEN=… cmdx agent --hub ${hub.url}`);
    expect(howto).not.toContain('--token TOKEN');

    await page.getByLabel('Token name').fill('e2e');
    await page.getByLabel('Only these tags').fill('gpu, linux');
    await page.getByRole('button', { name: 'Mint token' }).click();
    const token = page.getByRole('textbox', { name: 'Worker token' });
    await token.waitFor();
    const secret = await token.inputValue();
    expect(secret.length).toBeGreaterThan(10);
    await page.getByRole('button', { name: 'Copy', exact: true }).waitFor();
    // Listed, with its scope, never with the token itself.
    const row = tokens.getByRole('row').filter({ has: page.getByRole('cell', { name: 'e2e', exact: true }) });
    await row.waitFor();
    expect(await row.textContent()).toContain('gpu, linux');
    expect(await tokens.locator('table').textContent()).not.toContain(secret);
    await screenshot(page, '08-admin');

    // A worker polling with it gets in; once revoked here, it is refused.
    const poll = () =>
      fetch(`${hub.url}/api/jobs/get-job?workerId=e2e-poller`, { headers: { 'x-worker-token': secret } }).then((r) => r.status);
    expect(await poll()).not.toBe(401);
    await row.getByRole('button', { name: 'Revoke e2e' }).click();
    await row.getByRole('group', { name: 'Revoke e2e?' }).getByRole('button', { name: 'Revoke e2e' }).click();
    await page.getByRole('status').filter({ hasText: 'Token e2e revoked; 0 agent sessions closed' }).waitFor();
    await row.waitFor({ state: 'detached' });
    expect(await poll()).toBe(401);
  });

  it('manages a user: quotas, disable (sign-in refused), delete keeping their jobs', async () => {
    const email = 'managed@test.local';
    await page.getByLabel('New user email').fill(email);
    await page.getByLabel('New user password').fill('managed-pass-1');
    await page.getByRole('button', { name: 'Add user' }).click();
    await page.getByRole('status').filter({ hasText: `Added ${email}` }).waitFor();
    const row = page.locator('tr', { has: page.getByRole('cell', { name: email, exact: true }) });
    await row.locator('summary').click();
    const panel = page.getByRole('group', { name: `Manage ${email}` });
    await panel.getByLabel('Max queued jobs').fill('five');
    await panel.getByRole('button', { name: 'Save quotas' }).click();
    await panel.getByRole('alert').filter({ hasText: 'whole numbers' }).waitFor();
    await panel.getByLabel('Max queued jobs').fill('5');
    await panel.getByRole('button', { name: 'Save quotas' }).click();
    await page.getByRole('status').filter({ hasText: `Quotas of ${email} saved` }).waitFor();
    await row.getByText('queued 5, running hub default').waitFor();
    await panel.getByRole('button', { name: 'Disable' }).click();
    await page.getByRole('status').filter({ hasText: `${email} disabled` }).waitFor();
    await row.getByText('disabled', { exact: true }).waitFor();
    // From outside the page (a refused request would be a console error there).
    const login = await fetch(`${hub.url}/api/auth/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email, password: 'managed-pass-1' }),
    });
    expect(login.status).toBe(403);
    await screenshot(page, '08b-admin-manage');
    const del = panel.getByRole('button', { name: `Delete ${email}` });
    expect(await del.isDisabled()).toBe(true);
    await panel.getByLabel('keep their jobs').check();
    await del.click();
    await page.getByRole('status').filter({ hasText: `${email} deleted; their jobs are kept` }).waitFor();
    await expect.poll(async () => row.count()).toBe(0);
  });

  it('does not show the first user’s job to a second user', async () => {
    const second = await newPage(browser, hub.url);
    try {
      await signIn(second.page, USER_EMAIL, USER_PASSWORD);
      await second.page.getByText('No jobs yet').waitFor();
      await second.page.goto(firstJobUrl);
      await second.page.getByRole('heading', { name: 'Job not found' }).waitFor();
      expect(await second.page.locator('.term-host').count()).toBe(0);
      // Nor the first user's artifacts.
      const status = await second.page.evaluate(async (u) => (await fetch(u)).status, artifactUrl);
      expect(status).toBe(404);
      await screenshot(second.page, '09-second-user-not-found');
      expect(second.errors).toEqual([]);
    } finally {
      await second.context.close();
    }
  });

  it('renders 100,000 lines while the page stays responsive', async () => {
    const heavy = await newPage(browser, hub.url);
    try {
      // Probe the main thread from the first script on: the longest gap between animation
      // frames and the longest task while the output streams in.
      await heavy.page.addInitScript(() => {
        const w = window as unknown as { __probe: { maxGap: number; maxTask: number; frames: number } };
        w.__probe = { maxGap: 0, maxTask: 0, frames: 0 };
        let last = performance.now();
        const tick = (t: number) => {
          w.__probe.maxGap = Math.max(w.__probe.maxGap, t - last);
          w.__probe.frames++;
          last = t;
          requestAnimationFrame(tick);
        };
        requestAnimationFrame(tick);
        try {
          new PerformanceObserver((list) => {
            for (const e of list.getEntries()) w.__probe.maxTask = Math.max(w.__probe.maxTask, e.duration);
          }).observe({ type: 'longtask', buffered: true });
        } catch {
          // no long-task API: the frame gap still measures blocking
        }
      });
      await signIn(heavy.page, ADMIN_EMAIL, ADMIN_PASSWORD);
      await heavy.page.evaluate(() => {
        const w = window as unknown as { __probe: { maxGap: number; maxTask: number } };
        w.__probe.maxGap = 0;
        w.__probe.maxTask = 0;
      });
      const started = Date.now();
      await submitFromForm(heavy.page, "seq 1 100000 | sed 's/^/line /'");
      await waitFor('line 100000 in the terminal', async () => (await terminalText(heavy.page)).includes('line 100000'), 120_000);
      const elapsed = Date.now() - started;
      await heavy.page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });

      // Scrolling up stops following; "Jump to end" brings the tail back.
      const term = heavy.page.locator('.term-host');
      const box = (await term.boundingBox())!;
      await heavy.page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
      await heavy.page.mouse.wheel(0, -2000);
      await heavy.page.getByRole('button', { name: 'Jump to end' }).click({ timeout: 10_000 });
      await heavy.page.getByText('At the end', { exact: true }).waitFor();
      expect(await terminalText(heavy.page)).toContain('line 100000');

      // Still responsive: search works on the rendered buffer.
      await heavy.page.getByLabel('Search output').fill('line 99990');
      await heavy.page.getByRole('button', { name: 'Next' }).click();
      expect(await heavy.page.getByText('No matches').count()).toBe(0);

      const probe = await heavy.page.evaluate(
        () => (window as unknown as { __probe: { maxGap: number; maxTask: number; frames: number } }).__probe,
      );
      mkdirSync(ARTIFACTS, { recursive: true });
      writeFileSync(join(ARTIFACTS, 'responsiveness.json'), JSON.stringify({ ...probe, elapsedMs: elapsed }, null, 2));
      await screenshot(heavy.page, '10-job-100k-lines');
      // "Not blocked for seconds": no frame gap or task reaches one second.
      expect(probe.maxGap, `longest frame gap ${probe.maxGap} ms`).toBeLessThan(1000);
      expect(probe.maxTask, `longest task ${probe.maxTask} ms`).toBeLessThan(1000);
      expect(heavy.errors).toEqual([]);
    } finally {
      await heavy.context.close();
    }
  });

  it('searches the whole log, says what the terminal dropped, links to lines and folds sections', async () => {
    const logs = await newPage(browser, hub.url);
    try {
      await signIn(logs.page, ADMIN_EMAIL, ADMIN_PASSWORD);
      // Line 2 (in a GitHub Actions group) is far above the 20,000 lines the terminal keeps;
      // line 30,004 is near the end.
      const url = await submitFromForm(
        logs.page,
        "printf '::group::Setup\\nNeedle early\\n::endgroup::\\n'; seq 1 30000 | sed 's/^/row /'; echo needle late",
      );
      const p = logs.page;
      await p.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
      const notice = p.locator('.log-truncated');
      await notice.waitFor({ timeout: 30_000 });
      await waitFor('the line count', async () => /of 30,004 are not shown/.test(await notice.innerText()));

      // Search runs on the hub over the whole log: line 2 is found, grouped under its section,
      // and shown with its neighbours in the lines viewer since the terminal dropped it.
      await p.getByLabel('Search output').fill('needle');
      await p.getByRole('button', { name: 'Next' }).click();
      const results = p.getByRole('region', { name: 'Search results' });
      await results.getByText('2 lines match “needle” in the whole log').waitFor();
      await results.locator('summary', { hasText: 'Setup (lines 1–3): 1 match' }).waitFor();
      expect(await results.getByRole('link', { name: 'Line 30004' }).count()).toBe(1);
      await waitFor('the URL at #L2', async () => new URL(p.url()).hash === '#L2');
      const viewer = p.getByRole('region', { name: 'Earlier lines' });
      await viewer.locator('.log-line.current', { hasText: 'Needle early' }).waitFor();
      expect(await viewer.locator('.log-line.current .log-no').innerText()).toBe('2');
      await screenshot(p, '13-log-search-earlier-line');

      // The next match is in the terminal: it scrolls there and the viewer closes.
      await p.getByRole('button', { name: 'Next' }).click();
      await waitFor('line 30004 in view', async () => (await terminalText(p)).includes('needle late'));
      // The viewer closes once the page has moved to the match (a render later, not at once).
      await viewer.waitFor({ state: 'detached' });
      await waitFor('the URL at #L30004', async () => new URL(p.url()).hash === '#L30004');

      // "Show earlier lines" pages through what the terminal dropped; sections fold.
      await p.getByRole('button', { name: 'Show earlier lines' }).click();
      await viewer.locator('[data-line="1"]').waitFor();
      await viewer.locator('summary', { hasText: 'Setup' }).click();
      expect(await viewer.locator('[data-line="2"]').isVisible()).toBe(false);
      expect(await viewer.locator('.log-line').count()).toBe(2000);
      await viewer.getByRole('button', { name: 'Load more lines' }).click();
      await viewer.locator('[data-line="4000"]').waitFor();

      // A link to a line: opening the URL with #L5 shows line 5 (row 2) highlighted.
      const linked = await newPage(browser, hub.url);
      try {
        await signIn(linked.page, ADMIN_EMAIL, ADMIN_PASSWORD);
        await linked.page.goto(`${url}#L5`);
        const v = linked.page.getByRole('region', { name: 'Earlier lines' });
        await v.locator('.log-line.current', { hasText: 'row 2' }).waitFor({ timeout: 30_000 });
        expect(linked.errors).toEqual([]);
      } finally {
        await linked.context.close();
      }
      // The sections list links to each one.
      await p.locator('.log-sections summary').click();
      await p.locator('.log-sections').getByRole('link', { name: 'Setup' }).waitFor();
      expect(logs.errors).toEqual([]);
    } finally {
      await logs.context.close();
    }
  });

  it('folds sections inside the terminal and shows when each line was stored', async () => {
    const folds = await newPage(browser, hub.url);
    try {
      const p = folds.page;
      await signIn(p, ADMIN_EMAIL, ADMIN_PASSWORD);
      await p.evaluate(() => localStorage.removeItem('cmdx.timestamps'));
      // A live job: everything shows as it comes; the reader folds a section while it runs
      // and its later lines stay out of the terminal.
      const live = await submitFromForm(
        p,
        "printf '::group::Live\\nfirst in live\\n'; sleep 3; printf 'second in live\\n::endgroup::\\nafter live\\n'",
      );
      await waitFor('the first line', async () => (await terminalText(p)).includes('first in live'));
      expect(await terminalText(p)).toContain('▾ Live');
      await p.locator('.log-sections summary').click();
      await p.getByRole('button', { name: 'Fold Live' }).click();
      await waitFor('the section folded', async () => (await terminalText(p)).includes('▸ Live'));
      await p.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
      await waitFor('the line after the section', async () => (await terminalText(p)).includes('after live'));
      expect(await terminalText(p)).not.toContain('second in live');
      expect(await p.getByRole('button', { name: 'Fold Live' }).getAttribute('aria-pressed')).toBe('true');

      // A finished log opens folded as its markers ask: GitHub groups and `---` folded, `+++`
      // open; a click on a header row in the terminal unfolds it.
      const done = await submitFromForm(
        p,
        "printf 'start\\n::group::Setup\\nsetup line a\\nsetup line b\\n::endgroup::\\n--- Build\\nbuild line\\n+++ Test\\ntest line\\n'",
      );
      await p.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
      await p.reload();
      await waitFor('the finished log', async () => (await terminalText(p)).includes('test line'));
      let text = await terminalText(p);
      expect(text).toContain('▸ Setup (3 lines)');
      expect(text).toContain('▸ Build (1 line)');
      expect(text).toContain('▾ Test');
      expect(text).not.toContain('setup line a');
      expect(text).not.toContain('::group::');
      // Hover (xterm finds links on mouse moves), then click, as a reader's mouse would.
      const header = (await p.locator('.term-host .xterm-rows > div', { hasText: '▸ Setup' }).boundingBox())!;
      await p.mouse.move(header.x + 20, header.y + header.height / 2);
      await waitFor('the header as a link', async () => (await p.locator('.term-host .xterm-screen').evaluate((e) => getComputedStyle(e).cursor)) === 'pointer' ||
        (await p.locator('.term-host .xterm').evaluate((e) => e.classList.contains('xterm-cursor-pointer'))));
      await p.mouse.click(header.x + 20, header.y + header.height / 2);
      await waitFor('Setup unfolded', async () => (await terminalText(p)).includes('setup line a'));
      expect(await terminalText(p)).toContain('▸ Build (1 line)');
      // Back folded from the list; a link to a line inside it unfolds it and selects the line.
      await p.locator('.log-sections summary').click();
      await p.getByRole('button', { name: 'Fold Setup' }).click();
      await waitFor('Setup folded', async () => !(await terminalText(p)).includes('setup line a'));
      await p.goto(`${done}#L4`);
      await waitFor('line 4 shown', async () => (await terminalText(p)).includes('setup line b'));
      await waitFor('line 4 selected', async () => (await p.evaluate(() => window.getSelection()?.toString() ?? '')).length > 0 ||
        (await p.locator('.xterm-selection div').count()) > 0);

      // Timestamps: each line starts with the time the hub stored it, in the viewer's zone;
      // the choice survives a reload.
      await p.getByLabel('Timestamps').check();
      await waitFor('stamped lines', async () => /\d\d:\d\d:\d\d\.\d{3} test line/.test(await terminalText(p)));
      const stamp = /(\d\d):(\d\d):(\d\d)\.\d{3} test line/.exec(await terminalText(p))!;
      // The job's end in the page's zone, as seconds of the day: the stamp is within its run.
      const endSec = await p.evaluate(async (id) => {
        const job = await (await fetch(`/api/jobs/status?jobId=${id}&output=false`)).json();
        const [h, m, sec] = new Date(job.completedAt).toLocaleTimeString('en-GB', { hourCycle: 'h23' }).split(':').map(Number);
        return h! * 3600 + m! * 60 + sec!;
      }, done.split('/').pop()!);
      const stampSec = +stamp[1]! * 3600 + +stamp[2]! * 60 + +stamp[3]!;
      expect((endSec - stampSec + 86_400) % 86_400).toBeLessThan(5);
      await p.reload();
      await waitFor('stamped after a reload', async () => /\d\d:\d\d:\d\d\.\d{3} test line/.test(await terminalText(p)));
      expect(await p.getByLabel('Timestamps').isChecked()).toBe(true);
      // Written once: a reload with #L4 unfolds Setup while the log streams in.
      expect((await terminalText(p)).match(/test line/g)).toHaveLength(1);
      await screenshot(p, '14-folds-and-timestamps');
      await p.getByLabel('Timestamps').uncheck();
      await waitFor('plain lines', async () => (await terminalText(p)).includes('\ntest line') || (await terminalText(p)).startsWith('test line'));
      expect(live).not.toBe(done);
      expect(folds.errors).toEqual([]);
    } finally {
      await folds.context.close();
    }
  });

  it('makes a running job’s terminal follow the page’s, the job seeing SIGWINCH', async () => {
    const sized = await newPage(browser, hub.url);
    try {
      const p = sized.page;
      await signIn(p, ADMIN_EMAIL, ADMIN_PASSWORD);
      await p.evaluate(() => localStorage.removeItem('cmdx.timestamps'));
      // The job prints its terminal's size at the start and on every SIGWINCH.
      await submitFromForm(
        p,
        "trap 'echo size $(stty size </dev/tty)' WINCH; echo size $(stty size </dev/tty); i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
      );
      await waitFor('the starting size', async () => (await terminalText(p)).includes('size 24 80')).catch(async (e) => {
        throw new Error(`${e}: terminal shows ${JSON.stringify(await terminalText(p))}`);
      });
      await waitFor('the size shown', async () => (await p.locator('.term-size').innerText()).includes("The job's terminal is 80×24."));
      const fit = p.getByRole('button', { name: /Fit it to this view \((\d+)×(\d+)\)/ });
      const [, cols, rows] = /\((\d+)×(\d+)\)/.exec((await fit.innerText()))!;
      await fit.click();
      await waitFor('the job told the new size', async () => (await terminalText(p)).includes(`size ${rows} ${cols}`));
      await waitFor('the size shown', async () => (await p.locator('.term-size').innerText()).includes(`${cols}×${rows}, following this view`));
      // Following: a narrower window narrows the job's terminal too.
      await p.setViewportSize({ width: 900, height: 800 });
      await waitFor('a narrower size', async () => {
        const m = [...(await terminalText(p)).matchAll(/size (\d+) (\d+)/g)].pop();
        return !!m && Number(m[2]) < Number(cols);
      });
      await p.getByRole('button', { name: 'Cancel' }).click();
      await p.locator('.page-header .badge[data-status="cancelled"]').waitFor({ timeout: 60_000 });
      expect(sized.errors).toEqual([]);
    } finally {
      await sized.context.close();
    }
  });

  it('reads well on a narrow window', async () => {
    const narrow = await newPage(browser, hub.url, 390, 844);
    try {
      await signIn(narrow.page, ADMIN_EMAIL, ADMIN_PASSWORD);
      await narrow.page.locator('.jobs-table tbody tr').first().waitFor();
      await screenshot(narrow.page, '11-jobs-narrow');
      await narrow.page.goto(firstJobUrl);
      await narrow.page.locator('.page-header .badge').first().waitFor();
      await screenshot(narrow.page, '12-job-narrow');
      const overflow = await narrow.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      expect(overflow, 'no horizontal page scroll').toBeLessThanOrEqual(1);
    } finally {
      await narrow.context.close();
    }
  });

  it('logged no console errors on the main page', () => {
    expect(errors).toEqual([]);
  });
});
