import { describe, expect, it } from 'vitest';
import { LineTracker, groupBySection, lineFromHash, parseMarker, visibleText } from './logLines';

describe('visibleText', () => {
  it('drops escape sequences and keeps a progress bar’s last state', () => {
    expect(visibleText('\x1b[1;31mERROR\x1b[0m: x')).toBe('ERROR: x');
    expect(visibleText('\x1b]8;;http://a\x07link\x1b]8;;\x1b\\')).toBe('link');
    expect(visibleText('10%\r50%\r100% done')).toBe('100% done');
    expect(visibleText('crlf line\r')).toBe('crlf line');
  });
});

describe('parseMarker', () => {
  it('reads GitHub Actions groups and Buildkite headers', () => {
    expect(parseMarker('::group::Build')).toEqual({ kind: 'group', name: 'Build' });
    expect(parseMarker('\x1b[36m::group::Run tests\x1b[0m\r')).toEqual({ kind: 'group', name: 'Run tests' });
    expect(parseMarker('::endgroup::')).toEqual({ kind: 'endgroup' });
    expect(parseMarker('--- :hammer: Build')).toEqual({ kind: 'header', name: ':hammer: Build', open: false });
    expect(parseMarker('+++ Tests')).toEqual({ kind: 'header', name: 'Tests', open: true });
    expect(parseMarker('~~~ Setup')).toEqual({ kind: 'header', name: 'Setup', open: false });
  });

  it('ignores lines that only look alike', () => {
    for (const s of ['---', '--- ', '----- x', ' ::group::x', 'diff --- a', '+++b', '::endgroup:: extra']) {
      expect(parseMarker(s), s).toBeNull();
    }
  });
});

describe('LineTracker', () => {
  const enc = new TextEncoder();

  it('counts lines across chunk boundaries, and a last line without newline', () => {
    const t = new LineTracker();
    t.push(enc.encode('a\nb'));
    expect(t.lines).toBe(2);
    t.push(enc.encode('b\n'));
    expect(t.lines).toBe(2);
    t.push(enc.encode('c\n\n'));
    expect(t.lines).toBe(4);
  });

  it('decodes UTF-8 split between chunks', () => {
    const t = new LineTracker();
    const bytes = enc.encode('::group::Ünïcode\n');
    t.push(bytes.slice(0, 11));
    t.push(bytes.slice(11));
    expect(t.sections.map((s) => s.name)).toEqual(['Ünïcode']);
  });

  it('records sections: headers end the previous one, groups nest inside headers', () => {
    const t = new LineTracker();
    t.text(
      [
        'preamble', // 1
        '--- Setup', // 2
        'setting up', // 3
        '+++ Tests', // 4
        '::group::unit', // 5
        'ok 1', // 6
        '::endgroup::', // 7
        'after group', // 8
        '::group::open at end', // 9
        'still going', // 10
      ].join('\n') + '\n',
    );
    expect(t.sections).toEqual([
      { name: 'Setup', line: 2, end: 3, depth: 0, open: false },
      { name: 'Tests', line: 4, end: null, depth: 0, open: true },
      { name: 'unit', line: 5, end: 7, depth: 1, open: false },
      { name: 'open at end', line: 9, end: null, depth: 1, open: false },
    ]);
    expect(t.sectionOf(1)).toBeNull();
    expect(t.sectionOf(3)?.name).toBe('Setup');
    expect(t.sectionOf(6)?.name).toBe('unit');
    expect(t.sectionOf(8)?.name).toBe('Tests');
    expect(t.sectionOf(10)?.name).toBe('open at end');
    const groups = groupBySection([{ line: 1 }, { line: 3 }, { line: 6 }, { line: 6 }, { line: 8 }], (n) => t.sectionOf(n));
    expect(groups.map((g) => [g.section?.name ?? null, g.matches.length])).toEqual([
      [null, 1],
      ['Setup', 1],
      ['unit', 2],
      ['Tests', 1],
    ]);
  });
});

describe('lineFromHash', () => {
  it('reads #L123 and nothing else', () => {
    expect(lineFromHash('#L123')).toBe(123);
    for (const h of ['', '#L0', '#L', '#l5', '#L12a', '#L01', '#L12345678901']) expect(lineFromHash(h), h).toBeNull();
  });
});

describe('LineTracker checkpoints', () => {
  it('remembers where every 1000th line starts', () => {
    const t = new LineTracker();
    const enc = new TextEncoder();
    for (let i = 1; i <= 2500; i++) t.push(enc.encode(`${i}\n`));
    const at = (n: number) => Array.from({ length: n - 1 }, (_, i) => `${i + 1}\n`).join('').length;
    expect(t.checkpoints).toEqual([
      { line: 1, at: 0 },
      { line: 1001, at: at(1001) },
      { line: 2001, at: at(2001) },
    ]);
    expect(t.checkpointFor(1500)).toEqual({ line: 1001, at: at(1001) });
    expect(t.checkpointFor(1)).toEqual({ line: 1, at: 0 });
  });
});
