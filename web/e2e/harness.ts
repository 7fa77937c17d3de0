// Starts a real `cmdx dev` and a headless Debian Chromium for the end-to-end tests.
//
// CMDX_BIN: the cmdx binary (default ../target/debug/cmdx, relative to web/).
// CHROMIUM: the browser (default /usr/bin/chromium). Nothing is ever downloaded.

import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const ARTIFACTS = join(WEB_DIR, 'e2e', 'artifacts');

export const ADMIN_EMAIL = 'admin@cmdx.test';
export const ADMIN_PASSWORD = 'admin-password-e2e';

export interface Hub {
  url: string;
  process: ChildProcess;
  output: () => string;
  stop: () => Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => res(port));
    });
  });
}

export function cmdxBin(): string {
  return resolve(WEB_DIR, process.env.CMDX_BIN ?? '../target/debug/cmdx');
}

/** Starts `cmdx dev` with one agent and waits for it to print its URL. */
export async function startHub(): Promise<Hub> {
  const bin = cmdxBin();
  if (!existsSync(bin)) {
    throw new Error(
      `cmdx binary not found at ${bin}: build it first (cargo build, from the repository root) ` +
        'or point CMDX_BIN at it',
    );
  }
  const port = await freePort();
  const data = mkdtempSync(join(tmpdir(), 'cmdx-e2e-'));
  // The agents run jobs as unprivileged users: their work dirs (under the data dir) must be
  // reachable, and mkdtemp makes 0700 folders.
  chmodSync(data, 0o755);
  let out = '';
  const child = spawn(bin, ['dev', '--listen', `127.0.0.1:${port}`, '--data', data, '--agents', '1'], {
    env: {
      ...process.env,
      CMDX_ADMIN_EMAIL: ADMIN_EMAIL,
      CMDX_ADMIN_PASSWORD: ADMIN_PASSWORD,
      RUST_LOG: process.env.RUST_LOG ?? 'info',
      // Every request comes from 127.0.0.1: keep the per-IP limits out of the way of one
      // browser doing a whole session's work in a minute.
      CMDX_RATE_LIMIT_PER_MIN: process.env.CMDX_RATE_LIMIT_PER_MIN ?? '6000',
      CMDX_LOGIN_RATE_LIMIT_PER_MIN: process.env.CMDX_LOGIN_RATE_LIMIT_PER_MIN ?? '600',
      // A small upload limit so the 413 path is exercised with a few-MB file.
      CMDX_MAX_UPLOAD_BYTES: process.env.CMDX_MAX_UPLOAD_BYTES ?? '2097152',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: false,
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const exited = await Promise.race([
        new Promise<boolean>((r) => child.once('exit', () => r(true))),
        new Promise<boolean>((r) => setTimeout(() => r(false), 10_000)),
      ]);
      if (!exited) child.kill('SIGKILL');
    }
    try {
      rmSync(data, { recursive: true, force: true });
    } catch (e) {
      // e.g. a job's tmpfs still mounted: report it, do not fail the suite on cleanup.
      console.warn(`could not remove ${data}: ${(e as Error).message}`);
    }
  };

  const url = await new Promise<string>((res, rej) => {
    const timer = setTimeout(() => {
      rej(new Error(`cmdx dev printed no URL within 60 s; its output:\n${out.slice(-4000)}`));
    }, 60_000);
    const onData = (b: Buffer) => {
      out += b.toString();
      const m = /https?:\/\/(?:127\.0\.0\.1|localhost|\[::1\]):\d+/.exec(out);
      if (m) {
        clearTimeout(timer);
        res(m[0].replace('localhost', '127.0.0.1'));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('error', (e) => {
      clearTimeout(timer);
      rej(new Error(`cannot start ${bin}: ${e.message}`));
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      rej(
        new Error(
          `cmdx dev exited (code ${code}, signal ${sig}) before printing its URL ` +
            `(does this build have \`cmdx dev\`?); its output:\n${out.slice(-4000)}`,
        ),
      );
    });
  }).catch(async (e: unknown) => {
    await stop();
    throw e;
  });
  // Keep collecting output for failure messages.
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out += b.toString()));

  // The URL is printed when ready; still wait until HTTP answers.
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const r = await fetch(`${url}/api/auth/me`);
      if (r.status === 401 || r.ok) break;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`cmdx dev at ${url} does not answer /api/auth/me; its output:\n${out.slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  if (process.env.CMDX_E2E_WEB === 'preview') {
    // The hub does not serve the dashboard (yet): serve web/dist with `vite preview`, which
    // proxies /api and /ws to the hub (vite.config.ts), and test through it.
    const preview = await startPreview(url).catch(async (e: unknown) => {
      await stop();
      throw e;
    });
    return {
      url: preview.url,
      process: child,
      output: () => out,
      stop: async () => {
        await preview.stop();
        await stop();
      },
    };
  }
  return { url, process: child, output: () => out, stop };
}

async function startPreview(hubUrl: string): Promise<{ url: string; stop: () => Promise<void> }> {
  if (!existsSync(join(WEB_DIR, 'dist', 'index.html'))) {
    throw new Error('CMDX_E2E_WEB=preview needs web/dist: run npm run build first');
  }
  const port = await freePort();
  const vite = join(WEB_DIR, 'node_modules', 'vite', 'bin', 'vite.js');
  let out = '';
  const child = spawn(process.execPath, [vite, 'preview', '--port', String(port), '--strictPort', '--host', '127.0.0.1'], {
    cwd: WEB_DIR,
    env: { ...process.env, CMDX_HUB: hubUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${url}/`)).ok) return { url, stop };
    } catch {
      // not yet
    }
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`vite preview did not start; its output:\n${out.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function launchBrowser(): Promise<Browser> {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(`Chromium not found at ${executablePath}: apt-get install chromium, or set CHROMIUM`);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

/** Console errors and uncaught exceptions seen by a page, minus expected HTTP statuses. */
export function watchConsole(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    // The browser logs every 4xx fetch; the tests provoke 401 (signed out, bad password),
    // 404 (someone else's job) and 413 (oversized upload) on purpose: answers, not app errors.
    if (/Failed to load resource: the server responded with a status of 4(01|04|13)/.test(text)) return;
    errors.push(`console: ${text}`);
  });
  return errors;
}

export async function newPage(browser: Browser, base: string, width = 1280, height = 800): Promise<{ context: BrowserContext; page: Page; errors: string[] }> {
  const context = await browser.newContext({ baseURL: base, viewport: { width, height } });
  const page = await context.newPage();
  const errors = watchConsole(page);
  return { context, page, errors };
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: false });
}

export async function signIn(page: Page, email: string, password: string): Promise<void> {
  await page.goto('/');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Jobs', exact: true }).waitFor();
}

/** Text currently rendered in the job page's terminal viewport. */
export async function terminalText(page: Page): Promise<string> {
  return page.locator('.term-host .xterm-rows').innerText();
}

/** Polls `f` until it returns true, or fails with `what` after `ms`. */
export async function waitFor(what: string, f: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await f()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
