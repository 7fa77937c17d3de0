// Lines of a job's log as the job page numbers them: line 1 starts at the first stored byte,
// as in the hub's search (`GET /api/jobs/{id}/output/search`). Pure: the line and section
// tracking of what the terminal was given, section markers, `#L123` fragments.

/** Characters of one line kept for marker parsing (a marker is short). */
const KEEP = 512;
/** Lines between two checkpoints of [`LineTracker`]. */
export const CHECKPOINT = 1000;

/**
 * A line as a terminal shows it, roughly (the hub's search matches the same text): escape
 * sequences and control characters but tab removed; a carriage return followed by more text
 * starts the line over (a progress bar's last state).
 */
export function visibleText(line: string): string {
  let out = '';
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c === 0x1b) {
      const next = line[i + 1];
      if (next === '[') {
        i += 2;
        while (i < line.length && !(line.charCodeAt(i) >= 0x40 && line.charCodeAt(i) <= 0x7e)) i++;
      } else if (next === ']') {
        i += 2;
        while (i < line.length && line.charCodeAt(i) !== 0x07 && line.charCodeAt(i) !== 0x1b) i++;
        if (line.charCodeAt(i) === 0x1b) i++;
      } else {
        i++;
      }
    } else if (c === 0x0d) {
      if (line.slice(i + 1).trim() !== '') out = '';
    } else if (c === 0x09 || (c > 0x1f && c !== 0x7f)) {
      out += line[i];
    }
  }
  return out;
}

/** A section marker: GitHub Actions `::group::NAME` / `::endgroup::`, Buildkite `--- NAME`,
 * `+++ NAME` (shown open) and `~~~ NAME` headers. */
export type Marker = { kind: 'group'; name: string } | { kind: 'endgroup' } | { kind: 'header'; name: string; open: boolean };

export function parseMarker(raw: string): Marker | null {
  const line = visibleText(raw).trimEnd();
  if (line.startsWith('::group::')) return { kind: 'group', name: line.slice(9).trim() || 'Group' };
  if (line === '::endgroup::') return { kind: 'endgroup' };
  const m = /^(---|\+\+\+|~~~) (.*\S)/.exec(line);
  if (m) return { kind: 'header', name: m[2], open: m[1] === '+++' };
  return null;
}

/** A collapsible section: its header is line `line`; it runs to line `end` (inclusive; null
 * while still open). A GitHub group inside a Buildkite section has depth 1. */
export interface Section {
  name: string;
  line: number;
  end: number | null;
  depth: number;
  /** Shown open by default (`+++` headers). */
  open: boolean;
}

/**
 * Follows the text given to the terminal: counts lines and records sections. A Buildkite
 * header ends the section before it (and any group in it); `::endgroup::` ends the open group.
 */
export class LineTracker {
  /** Number of the line being written (1 before any text). */
  line = 1;
  /** Bytes taken so far. */
  bytes = 0;
  /** Every section seen, in order of their headers. */
  readonly sections: Section[] = [];
  /** Where every [`CHECKPOINT`]th line starts (`at`: bytes taken before it), so that a line
   * the terminal no longer holds can be fetched from near it. */
  readonly checkpoints: { line: number; at: number }[] = [{ line: 1, at: 0 }];
  private partial = '';
  private header: Section | null = null;
  private group: Section | null = null;
  private decoder = new TextDecoder();

  /** Takes the next bytes of the log. */
  push(bytes: Uint8Array): void {
    let from = 0;
    for (;;) {
      const nl = bytes.indexOf(0x0a, from);
      const seg = bytes.subarray(from, nl < 0 ? bytes.length : nl);
      if (this.partial.length < KEEP) {
        this.partial += this.decoder.decode(seg.subarray(0, KEEP * 4), { stream: true });
      }
      if (nl < 0) break;
      this.endLine(this.partial + this.decoder.decode());
      this.decoder = new TextDecoder();
      this.partial = '';
      this.line++;
      from = nl + 1;
      if ((this.line - 1) % CHECKPOINT === 0) this.checkpoints.push({ line: this.line, at: this.bytes + from });
    }
    this.bytes += bytes.length;
  }

  /** Takes the next text of the log. */
  text(s: string): void {
    this.push(new TextEncoder().encode(s));
  }

  /** The nearest checkpoint at or before line `n`. */
  checkpointFor(n: number): { line: number; at: number } {
    let best = this.checkpoints[0]!;
    for (const c of this.checkpoints) {
      if (c.line > n) break;
      best = c;
    }
    return best;
  }

  /** Lines written so far, counting a last line without its newline. */
  get lines(): number {
    return this.partial === '' ? this.line - 1 : this.line;
  }

  /** The innermost section holding line `n`, if any. */
  sectionOf(n: number): Section | null {
    let found: Section | null = null;
    for (const s of this.sections) {
      if (s.line > n) break;
      if (s.end === null || s.end >= n) {
        if (!found || s.depth >= found.depth) found = s;
      }
    }
    return found;
  }

  private endLine(raw: string): void {
    const m = parseMarker(raw);
    if (!m) return;
    const n = this.line;
    if (m.kind === 'header') {
      this.close('group', n - 1);
      this.close('header', n - 1);
      this.header = { name: m.name, line: n, end: null, depth: 0, open: m.open };
      this.sections.push(this.header);
    } else if (m.kind === 'group') {
      this.close('group', n - 1);
      this.group = { name: m.name, line: n, end: null, depth: this.header ? 1 : 0, open: false };
      this.sections.push(this.group);
    } else {
      this.close('group', n);
    }
  }

  private close(which: 'group' | 'header', end: number): void {
    const s = which === 'group' ? this.group : this.header;
    if (s) s.end = Math.max(s.line, end);
    if (which === 'group') this.group = null;
    else this.header = null;
  }
}

/** The line a `#L123` fragment points at. */
export function lineFromHash(hash: string): number | null {
  const m = /^#L([1-9]\d{0,9})$/.exec(hash);
  return m ? Number(m[1]) : null;
}

/** Matches grouped under the section each falls in (in log order; `null`: outside any). */
export function groupBySection<T extends { line: number }>(
  matches: T[],
  sectionOf: (line: number) => Section | null,
): { section: Section | null; matches: T[] }[] {
  const out: { section: Section | null; matches: T[] }[] = [];
  for (const m of matches) {
    const s = sectionOf(m.line);
    const last = out[out.length - 1];
    if (last && last.section === s) last.matches.push(m);
    else out.push({ section: s, matches: [m] });
  }
  return out;
}
