// Accessibility and keyboard use of the whole dashboard, against a real `cmdx dev`: axe-core
// audits every page (no serious or critical violation), the job page's terminal lets the
// keyboard out, filters live in the URL, times carry their zone, and the jobs table shows its
// Created column whole at laptop widths.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_EMAIL, ADMIN_PASSWORD, launchBrowser, newPage, startHub, type Hub } from './harness';

const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

interface Violation {
  id: string;
  impact: string | null;
  help: string;
  nodes: { target: string[] }[];
}

/** axe-core's serious and critical violations on the page as it is now. */
async function audit(p: Page): Promise<string[]> {
  // Through the debugging protocol, which the page's Content-Security-Policy (no inline
  // scripts) does not govern; the page itself stays as served.
  if (!(await p.evaluate(() => 'axe' in window))) await p.evaluate(AXE);
  const violations = (await p.evaluate(async () => {
    const axe = (window as unknown as { axe: { run: (ctx: Document, opts: object) => Promise<{ violations: unknown[] }> } }).axe;
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations;
  })) as Violation[];
  return violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.impact} ${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

let hub: Hub;
let browser: Browser;
let page: Page;
let jobUrl = '';

describe('accessibility and keyboard use', () => {
  beforeAll(async () => {
    hub = await startHub();
    browser = await launchBrowser();
    ({ page } = await newPage(browser, hub.url));
  });

  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
  });

  it('the sign-in page passes the audit', async () => {
    await page.goto('/');
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    expect(await audit(page)).toEqual([]);
    await page.getByLabel('Email').fill(ADMIN_EMAIL);
    await page.getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Jobs', exact: true }).waitFor();
  });

  it('every page passes the audit', async () => {
    const id = await page.evaluate(async () => {
      const r = await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command: 'printf "\\033[32mgreen\\033[0m\\n"; echo done' }),
      });
      return ((await r.json()) as { jobId: string }).jobId;
    });
    jobUrl = `/jobs/${id}`;
    await page.goto(jobUrl);
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    expect(await audit(page), 'job page').toEqual([]);
    // "1 of 3" where a lost attempt would be retried, a plain "1" where it would not.
    const attempt = page.locator('.facts dt', { hasText: /^Attempt$/ }).locator('xpath=following-sibling::dd[1]');
    expect((await attempt.textContent())?.trim()).toBe('1 of 3');
    const once = await page.evaluate(async () => {
      const r = await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command: 'true', maxAttempts: 1 }),
      });
      return ((await r.json()) as { jobId: string }).jobId;
    });
    await page.goto(`/jobs/${once}`);
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    await expect.poll(async () => (await attempt.textContent())?.trim()).toBe('1');
    for (const [link, heading] of [
      ['Jobs', 'Jobs'],
      ['New job', 'New job'],
      ['Workers', 'Workers'],
      ['Admin', 'Admin'],
    ] as const) {
      await page.getByRole('link', { name: link, exact: true }).first().click();
      await page.getByRole('heading', { name: heading, exact: true }).waitFor();
      if (link === 'Jobs') await page.locator('.jobs-table tbody tr').first().waitFor();
      if (link === 'Workers') await page.locator('.workers-table tbody tr').first().waitFor({ timeout: 60_000 });
      expect(await audit(page), `${link} page`).toEqual([]);
    }
  });

  it('lets the keyboard out of the terminal: a skip link, and Escape then Tab', async () => {
    await page.goto(jobUrl);
    await page.locator('.page-header .badge[data-status="completed"]').waitFor({ timeout: 60_000 });
    // A skip link jumps over the terminal.
    const skip = page.getByRole('link', { name: 'Skip past the output' });
    expect(await skip.count()).toBe(1);
    // Into the terminal: Tab stays in it (the shell may want it) until Escape is pressed.
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.press('Tab');
    expect(await page.evaluate(() => document.activeElement?.classList.contains('xterm-helper-textarea'))).toBe(true);
    await page.keyboard.press('Escape');
    await page.keyboard.press('Tab');
    const after = await page.evaluate(() => ({
      inTerminal: !!document.activeElement?.closest('.xterm'),
      tag: document.activeElement?.tagName,
    }));
    expect(after.inTerminal, JSON.stringify(after)).toBe(false);
    // Shift+Tab leaves backwards the same way.
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.press('Escape');
    await page.keyboard.press('Shift+Tab');
    expect(await page.evaluate(() => !!document.activeElement?.closest('.xterm'))).toBe(false);
  });

  it('keeps filters and search in the URL, through reload and back', async () => {
    await page.goto('/jobs');
    await page.getByRole('heading', { name: 'Jobs', exact: true }).waitFor();
    await page.getByLabel('Status').selectOption('completed');
    await page.getByLabel('Search commands').fill('green');
    await expect.poll(() => new URL(page.url()).searchParams.get('status')).toBe('completed');
    await expect.poll(() => new URL(page.url()).searchParams.get('q')).toBe('green');
    await page.reload();
    await page.getByRole('heading', { name: 'Jobs', exact: true }).waitFor();
    expect(await page.getByLabel('Status').inputValue()).toBe('completed');
    expect(await page.getByLabel('Search commands').inputValue()).toBe('green');
    await page.getByLabel('Status').selectOption('');
    await expect.poll(() => new URL(page.url()).searchParams.get('status')).toBe(null);
    await page.goBack();
    await expect.poll(async () => page.getByLabel('Status').inputValue()).toBe('completed');
  });

  it('shows times with their zone and the Created column whole at laptop widths', async () => {
    // A long command and the admin's Owner column: the widest the table gets.
    await page.evaluate(async () => {
      const long = `echo ${'a-rather-long-argument '.repeat(12)}`;
      await fetch('/api/jobs/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command: long, tags: ['nowhere'] }),
      });
    });
    await page.goto('/jobs');
    await page.locator('.jobs-table tbody tr').first().waitFor();
    const created = page.locator('.jobs-table tbody tr td.col-created').first();
    const exact = (await created.locator('time').getAttribute('title')) ?? '';
    expect(exact, 'the exact time, with its zone').toMatch(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} (UTC|GMT[+-]\d+|[A-Z]{3,5})$/);
    // The job page's times carry the zone too.
    await page.goto(jobUrl);
    const fact = page.locator('.facts dt', { hasText: /^Created$/ }).locator('xpath=following-sibling::dd[1]');
    await expect.poll(async () => (await fact.textContent()) ?? '').toMatch(/\d{2}:\d{2}:\d{2} (UTC|GMT[+-]\d+|[A-Z]{3,5})$/);
    await page.goto('/jobs');
    await page.locator('.jobs-table tbody tr').first().waitFor();
    for (const width of [1280, 1366, 1400]) {
      await page.setViewportSize({ width, height: 800 });
      const clipped = await created.evaluate((el) => el.scrollWidth > el.clientWidth + 1);
      expect(clipped, `Created clipped at ${width} px`).toBe(false);
      const visible = await created.evaluate((el) => {
        const r = el.getBoundingClientRect();
        return r.right <= window.innerWidth + 1;
      });
      expect(visible, `Created off screen at ${width} px`).toBe(true);
    }
    // The job page's facts wrap between words: "UTC" is not split over two lines. Only a word
    // too long for its column (an id, a long tag) may break.
    await page.goto(jobUrl);
    await fact.waitFor();
    for (const width of [1280, 1366, 390]) {
      await page.setViewportSize({ width, height: 800 });
      const broken = await page.locator('.facts dd').evaluateAll((dds) =>
        dds.flatMap((dd) => {
          const words: string[] = [];
          const walk = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
          for (let n = walk.nextNode(); n; n = walk.nextNode()) {
            for (const m of (n.textContent ?? '').matchAll(/\S+/g)) {
              if (m[0].length > 16) continue;
              const r = document.createRange();
              r.setStart(n, m.index!);
              r.setEnd(n, m.index! + m[0].length);
              const lines = new Set([...r.getClientRects()].map((c) => Math.round(c.top)));
              if (lines.size > 1) words.push(m[0]);
            }
          }
          return words;
        }),
      );
      expect(broken, `words split over lines at ${width} px`).toEqual([]);
    }
  });
});
