import { describe, expect, it } from 'vitest';
import { LineTracker } from './logLines';
import { formatStamp } from './format';
import { HOLD_BYTES, LogRenderer, type RenderOptions } from './logRender';

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The screen a terminal shows for `out` (rows of text; colours dropped): enough of a VT for
 * what the renderer writes and jobs commonly print (`\r`, CSI, ESC 7/8, cursor forward). */
function screen(out: Uint8Array[]): string[] {
  const rows: string[][] = [[]];
  let col = 0;
  let saved = 0;
  const s = out.map((o) => dec.decode(o)).join('');
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    const row = rows[rows.length - 1]!;
    if (c === '\n') {
      rows.push([]);
      col = 0;
    } else if (c === '\r') col = 0;
    else if (c === '\x1b') {
      if (s[i + 1] === '7') saved = col;
      else if (s[i + 1] === '8') col = saved;
      else if (s[i + 1] === '[') {
        let j = i + 2;
        while (!/[@-~]/.test(s[j]!)) j++;
        if (s[j] === 'C') col += Number(s.slice(i + 2, j) || '1');
        else if (s[j] === 'K') row.length = col;
        i = j;
        continue;
      }
      i++;
    } else {
      while (row.length < col) row.push(' ');
      row[col++] = c;
    }
  }
  return rows.map((r) => r.join('').trimEnd());
}

function renderer(opts: Partial<RenderOptions> = {}) {
  const tracker = new LineTracker();
  const r = new LogRenderer(tracker, { timestamps: false, foldByDefault: false, timeZone: 'UTC', ...opts });
  const out: Uint8Array[] = [];
  const push = (s: string, time: number | null = null) => out.push(r.push(enc.encode(s), time));
  return { r, tracker, out, push };
}

const LOG = ['start', '::group::Setup', 'setup 1', 'setup 2', '::endgroup::', '--- Build', 'build 1', '+++ Test', 'test 1', ''].join('\n');

describe('LogRenderer', () => {
  it('writes plain lines as they are and maps each row to its line', () => {
    const { r, out, push } = renderer();
    push('one\ntw');
    push('o\nthree\n');
    expect(screen(out)).toEqual(['one', 'two', 'three', '']);
    expect([0, 1, 2].map((i) => r.lineOfRow(i))).toEqual([1, 2, 3]);
    expect(r.atFreshRow).toBe(true);
  });

  it('shows section headers with a fold mark; folded sections write only their header', () => {
    const { r, tracker, out, push } = renderer();
    push(LOG);
    expect(screen(out)).toEqual(['start', '▾ Setup', 'setup 1', 'setup 2', '::endgroup::', '▾ Build', 'build 1', '▾ Test', 'test 1', '']);
    r.setFolded(tracker.sections[0]!, true);
    const again = r.rerender(1000);
    expect(screen(again)).toEqual(['start', '▸ Setup (3 lines)', '▾ Build', 'build 1', '▾ Test', 'test 1', '']);
    // Rows map to log lines with the folded ones skipped.
    expect([0, 1, 2, 3, 4, 5].map((i) => r.lineOfRow(i))).toEqual([1, 2, 6, 7, 8, 9]);
    expect(r.hidden(3)).toBe(true);
    expect(r.hidden(6)).toBe(false);
    // Going to a folded line unfolds what hides it.
    expect(r.reveal(4)).toBe(true);
    expect(screen(r.rerender(1000))).toEqual(screen(out));
  });

  it('folds what the markers ask for a complete log, +++ sections open', () => {
    const { out, push } = renderer({ foldByDefault: true });
    push(LOG);
    expect(screen(out)).toEqual(['start', '▸ Setup (3 lines)', '▸ Build (1 line)', '▾ Test', 'test 1', '']);
  });

  it('holds a possible marker until its newline, even split across chunks', () => {
    const { out, push } = renderer();
    push('::gr');
    expect(screen(out)).toEqual(['']);
    push('oup::Compile\nx\n');
    expect(screen(out)).toEqual(['▾ Compile', 'x', '']);
    // Not a marker after all: written as soon as that is clear.
    push('--x');
    expect(screen(out)).toEqual(['▾ Compile', 'x', '--x']);
    // A progress bar on a marker-looking line is not held forever.
    push('\n' + '-'.repeat(5000));
    expect(screen(out)[3]).toHaveLength(5000);
  });

  it('prefixes lines with when they were stored, again after a carriage return', () => {
    const t0 = Date.UTC(2026, 11, 4, 13, 4, 5, 7);
    const { out, push } = renderer({ timestamps: true });
    push('a\nb', t0);
    push('c\n50%\r', t0 + 1000);
    push('100%\n', t0 + 2000);
    expect(screen(out)).toEqual(['13:04:05.007 a', '13:04:05.007 bc', '13:04:06.007 100%', '']);
    expect(formatStamp(t0, 'Asia/Kolkata')).toBe('18:34:05.007');
  });

  it('a CRLF split across chunks is one line end, with no stamp for nothing', () => {
    const { out, push } = renderer({ timestamps: true });
    push('x\r', 0);
    push('\ny\n', 0);
    expect(screen(out)).toEqual(['00:00:00.000 x', '00:00:00.000 y', '']);
  });

  it('unknown times leave the stamp blank rather than guess', () => {
    const { out, push } = renderer({ timestamps: true });
    push('refetched\n', null);
    expect(screen(out)[0]).toBe(' '.repeat(13) + 'refetched');
  });

  it('puts its notices on rows of their own, the line going on after them', () => {
    const { r, out, push } = renderer();
    push('abc');
    out.push(r.notice('[… 10 bytes dropped …]'));
    push('def\nnext\n');
    expect(screen(out)).toEqual(['abc', '[… 10 bytes dropped …]', 'def', 'next', '']);
    expect([0, 1, 2, 3].map((i) => r.lineOfRow(i))).toEqual([1, 0, 1, 2]);
  });

  it('writes again only the rows the terminal keeps', () => {
    const { r, push } = renderer();
    for (let i = 1; i <= 50; i++) push(`line ${i}\n`);
    const rows = screen(r.rerender(10));
    expect(rows.length).toBeLessThan(15);
    expect(rows[rows.length - 2]).toBe('line 50');
  });

  it('keeps a bounded tail of the log to write again, numbered from where it starts', () => {
    const { r, push } = renderer();
    const line = 'x'.repeat(1023) + '\n';
    const chunk = line.repeat(1024); // 1 MiB, 1024 lines
    const chunks = HOLD_BYTES / chunk.length + 2;
    for (let i = 0; i < chunks; i++) push(chunk);
    const rows = screen(r.rerender(100_000));
    expect(rows.length - 1).toBeLessThan(chunks * 1024);
    expect(r.lineOfRow(0)).toBe(2 * 1024 + 1);
  });
});
