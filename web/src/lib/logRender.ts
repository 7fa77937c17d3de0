// What the job page writes to its terminal, made from the log: sections fold (their lines are
// not written, their header says so), lines can carry the time the hub stored them, and the
// page can tell which log line each terminal row holds. xterm.js can neither hide nor number
// rows, so folding or unfolding a section, or turning timestamps on, writes the log again from
// the bytes kept here ([`LogRenderer.rerender`]).
//
// Rows: every line written starts a row; the rows of one line past the first are the terminal's
// own wraps (`isWrapped`), which the page skips when it walks rows back from the cursor. Cursor-
// moving escape sequences would break this; job logs rarely use them outside one line (`\r`
// stays on its line).

import { formatStamp } from './format';
import { visibleText, type LineTracker, type Section } from './logLines';

/** Bytes of log kept to write again (the tail; the terminal holds 20,000 rows anyway). */
export const HOLD_BYTES = 16 * 1024 * 1024;
/** Bytes of a possible section marker line held back until its end (a marker is short). */
const MARKER_HOLD = 4096;
/** Visible starts of a line that may be a section marker (see `parseMarker`). */
const MARKER_PREFIXES = ['::group::', '::endgroup::', '--- ', '+++ ', '~~~ '];
/** Width of a timestamp (`HH:MM:SS.mmm`) and the space after it. */
export const STAMP_COLUMNS = 13;

const NL = 0x0a;
const CR = 0x0d;
const ESC = 0x1b;
const enc = new TextEncoder();
const dec = new TextDecoder();
const NEWLINE = enc.encode('\n');

/** Whether section `s` holds line `n` below its header (the header itself is not inside). */
function holds(s: Section, n: number): boolean {
  return s.line < n && (s.end === null || s.end >= n);
}

/** Whether a line whose visible text starts with `visible` may still turn out a marker. */
function mayBeMarker(visible: string): boolean {
  return MARKER_PREFIXES.some((p) => visible.startsWith(p) || p.startsWith(visible));
}

interface Held {
  bytes: Uint8Array;
  time: number | null;
  /** A notice of the page's own (bytes dropped by the output cap), not log bytes. */
  notice?: string;
}

export interface RenderOptions {
  /** Prefix every line with the time the hub stored its first byte. */
  timestamps: boolean;
  /** Fold the sections the markers ask to (GitHub groups, Buildkite `---`/`~~~`): for a log
   * that is complete, where a section's lines are all known when it is shown. */
  foldByDefault: boolean;
  /** Time zone of the timestamps (the viewer's when undefined). */
  timeZone?: string;
}

/**
 * Turns the log's bytes into what the terminal is given. Feeds the [`LineTracker`] (line
 * numbers and sections) with every byte; keeps the last [`HOLD_BYTES`] to write again.
 */
export class LogRenderer {
  /** Log line each row started holds, in order (0: a notice of the page); `rowsBase` rows
   * before the first were dropped. */
  private rows: number[] = [];
  private rowsBase = 0;
  /** The cursor's row has something on it (else it is a fresh row after a newline). */
  private rowOpen = false;
  /** Number of the line being written. */
  private line = 1;
  /** Whether the current line is written; null at the start of a line. */
  private shown: boolean | null = null;
  /** Time of the current line's first byte. */
  private lineTime: number | null = null;
  /** A carriage return ended the last bytes: the next, unless a newline, rewrite the line. */
  private crPending = false;
  /** A line that may be a section marker, held until its newline. */
  private pending: Uint8Array[] | null = null;
  private pendingBytes = 0;
  /** Sections that may hold the current line, and the next section not yet looked at. */
  private active: Section[] = [];
  private nextSection = 0;

  private held: Held[] = [];
  private heldBytes = 0;
  /** Line number and mid-line state where the first held bytes start. */
  private heldLine = 1;
  private heldMidLine = false;

  /** Sections folded or unfolded by the reader (header line → folded). */
  private choice = new Map<number, boolean>();

  constructor(
    private readonly tracker: LineTracker,
    private opts: RenderOptions,
  ) {}

  get options(): RenderOptions {
    return this.opts;
  }

  /** The next log bytes, stored at `time`: what to write to the terminal. */
  push(bytes: Uint8Array, time: number | null): Uint8Array {
    this.tracker.push(bytes);
    this.hold({ bytes, time });
    return this.render(bytes, time);
  }

  /** A notice of the page's own (not log text) on a row of its own. */
  notice(text: string): Uint8Array {
    this.hold({ bytes: new Uint8Array(), time: null, notice: text });
    return this.renderNotice(text);
  }

  /** The log ended: a held-back last line without its newline is written as it is. */
  end(): Uint8Array {
    if (!this.pending) return new Uint8Array();
    const out: Uint8Array[] = [];
    this.releasePending(out);
    return concat(out);
  }

  /** Whether the section with its header on `line` is folded. */
  isFolded(s: Section): boolean {
    const c = this.choice.get(s.line);
    if (c !== undefined) return c;
    return this.opts.foldByDefault && !s.open;
  }

  /** Folds or unfolds a section (write again to show it). */
  setFolded(s: Section, folded: boolean): void {
    this.choice.set(s.line, folded);
  }

  /** Folds or unfolds every section. */
  setAllFolded(folded: boolean): void {
    for (const s of this.tracker.sections) this.choice.set(s.line, folded);
  }

  /** Unfolds the sections hiding line `n`; true when one was folded. */
  reveal(n: number): boolean {
    let changed = false;
    for (const s of this.tracker.sections) {
      if (s.line > n) break;
      if (holds(s, n) && this.isFolded(s)) {
        this.choice.set(s.line, false);
        changed = true;
      }
    }
    return changed;
  }

  setOptions(opts: Partial<RenderOptions>): void {
    this.opts = { ...this.opts, ...opts };
  }

  /** Whether the terminal holds line `n` when it holds the rows after the first: a line of a
   * folded section is not written. */
  hidden(n: number): boolean {
    for (const s of this.tracker.sections) {
      if (s.line >= n) break;
      if (holds(s, n) && this.isFolded(s)) return true;
    }
    return false;
  }

  /** Number of rows started so far (a row index past the last is the cursor's fresh row). */
  get rowCount(): number {
    return this.rowsBase + this.rows.length;
  }

  /** Whether the cursor's row is a fresh row that no line started yet. */
  get atFreshRow(): boolean {
    return !this.rowOpen;
  }

  /** Log line of row `i` (0: a notice; null: unknown or dropped). */
  lineOfRow(i: number): number | null {
    const j = i - this.rowsBase;
    return j >= 0 && j < this.rows.length ? this.rows[j]! : null;
  }

  /** Writes the held log again with the current options and folds, from a reset terminal:
   * only the last `keepRows` rows' worth of it (the terminal would drop the rest). */
  rerender(keepRows: number): Uint8Array[] {
    this.rows = [];
    this.rowsBase = 0;
    this.rowOpen = false;
    this.line = this.heldLine;
    this.shown = this.heldMidLine ? !this.hidden(this.line) : null;
    this.lineTime = null;
    this.crPending = false;
    this.pending = null;
    this.pendingBytes = 0;
    this.active = [];
    this.nextSection = 0;
    if (this.shown) this.startRow([], true);
    const outs: { rowsBefore: number; out: Uint8Array }[] = [];
    for (const h of this.held) {
      const rowsBefore = this.rowCount;
      const out = h.notice !== undefined ? this.renderNotice(h.notice) : this.render(h.bytes, h.time);
      if (out.length > 0) outs.push({ rowsBefore, out });
    }
    // Skip what ends before the rows the terminal keeps (its scrollback would drop it).
    const cut = this.rowCount - keepRows;
    let first = 0;
    while (first + 1 < outs.length && outs[first + 1]!.rowsBefore <= cut) first++;
    return outs.slice(first).map((o) => o.out);
  }

  private hold(h: Held): void {
    this.held.push(h);
    this.heldBytes += h.bytes.length;
    while (this.heldBytes > HOLD_BYTES && this.held.length > 1) {
      const old = this.held.shift()!;
      this.heldBytes -= old.bytes.length;
      for (const c of old.bytes) if (c === NL) this.heldLine++;
      if (old.bytes.length > 0) this.heldMidLine = old.bytes[old.bytes.length - 1] !== NL;
    }
  }

  private render(bytes: Uint8Array, time: number | null): Uint8Array {
    const out: Uint8Array[] = [];
    let i = 0;
    while (i < bytes.length) {
      if (this.shown === null && !this.pending) {
        this.lineTime = time;
        const c = bytes[i]!;
        if (c === 0x3a || c === 0x2d || c === 0x2b || c === 0x7e || c === ESC) {
          this.pending = [];
          this.pendingBytes = 0;
        } else {
          this.shown = !this.insideFolded(this.line);
          if (this.shown) this.startRow(out, true);
        }
      }
      const nl = bytes.indexOf(NL, i);
      const stop = nl < 0 ? bytes.length : nl;
      if (this.pending) {
        this.pending.push(bytes.subarray(i, stop));
        this.pendingBytes += stop - i;
        if (nl >= 0) {
          this.endPendingLine(out);
        } else if (this.pendingBytes > MARKER_HOLD || !mayBeMarker(visibleText(dec.decode(concat(this.pending))))) {
          this.releasePending(out);
        }
      } else if (this.shown) {
        if (nl >= 0 && !this.opts.timestamps) {
          out.push(bytes.subarray(i, nl + 1)); // the line and its newline, as they came
        } else {
          this.text(bytes.subarray(i, stop), out);
          if (nl >= 0) out.push(NEWLINE);
        }
      }
      if (nl < 0) break;
      if (this.shown) this.rowOpen = false;
      this.crPending = false;
      this.line++;
      this.shown = null;
      i = nl + 1;
    }
    return concat(out);
  }

  /** Text of a shown line (no newline): with timestamps, a carriage return that rewrites the
   * line writes its timestamp again. */
  private text(seg: Uint8Array, out: Uint8Array[]): void {
    if (seg.length === 0) return;
    if (!this.opts.timestamps) {
      out.push(seg);
      return;
    }
    let from = 0;
    if (this.crPending) {
      this.stamp(out);
      this.crPending = false;
    }
    for (;;) {
      const cr = seg.indexOf(CR, from);
      if (cr < 0) break;
      out.push(seg.subarray(from, cr + 1));
      from = cr + 1;
      if (from === seg.length) {
        this.crPending = true;
        return;
      }
      this.stamp(out);
    }
    out.push(seg.subarray(from));
  }

  /** The held line ended (its newline is next): a header is written as one, else as it is. */
  private endPendingLine(out: Uint8Array[]): void {
    const header = this.tracker.sections.find((s) => s.line === this.line) ?? null;
    if (!header) {
      this.releasePending(out);
      if (this.shown) out.push(NEWLINE);
      return;
    }
    this.pending = null;
    this.shown = !this.insideFolded(this.line);
    if (!this.shown) return;
    this.startRow(out, true);
    const folded = this.isFolded(header);
    const count = header.end === null ? '' : ` (${header.end - header.line} ${header.end - header.line === 1 ? 'line' : 'lines'})`;
    // Saved and restored attributes (ESC 7 / ESC 8): the header's style does not leak into
    // the lines after it, whose colours the job may have set before it.
    out.push(enc.encode(`\x1b7\x1b[0;1;36m${folded ? '▸' : '▾'} ${header.name}\x1b[0;2m${folded ? count : ''}\x1b8\n`));
  }

  /** Writes a held line as the text it is (not a marker after all). */
  private releasePending(out: Uint8Array[]): void {
    const parts = this.pending ?? [];
    this.pending = null;
    this.shown = !this.insideFolded(this.line);
    if (!this.shown) return;
    this.startRow(out, true);
    for (const p of parts) this.text(p, out);
  }

  private renderNotice(text: string): Uint8Array {
    const out: Uint8Array[] = [];
    if (this.pending) this.releasePending(out);
    if (this.rowOpen) out.push(enc.encode('\r\n'));
    this.pushRow(0);
    out.push(enc.encode(`\x1b7\x1b[0;33m${text}\x1b8\n`));
    this.rowOpen = false;
    // The line goes on after the notice: on a row of its own.
    if (this.shown) this.startRow(out, false);
    return concat(out);
  }

  /** A shown line starts (or goes on after a notice) on the cursor's row. */
  private startRow(out: Uint8Array[], stamp: boolean): void {
    if (!this.rowOpen) {
      this.pushRow(this.line);
      this.rowOpen = true;
    }
    if (stamp) this.stamp(out);
  }

  private stamp(out: Uint8Array[]): void {
    if (!this.opts.timestamps) return;
    const t = this.lineTime === null ? ' '.repeat(STAMP_COLUMNS - 1) : formatStamp(this.lineTime, this.opts.timeZone);
    // Written in grey, then the attributes restored and the cursor moved past it.
    out.push(enc.encode(`\x1b7\x1b[0;90m${t}\x1b8\x1b[${STAMP_COLUMNS}C`));
  }

  private pushRow(line: number): void {
    this.rows.push(line);
    // The terminal holds 20,000 rows: keep a margin more, drop the rest in batches.
    if (this.rows.length > 60_000) {
      this.rows = this.rows.slice(20_000);
      this.rowsBase += 20_000;
    }
  }

  /** Whether line `n` (starting now, lines before it all seen) is inside a folded section. */
  private insideFolded(n: number): boolean {
    const sections = this.tracker.sections;
    while (this.nextSection < sections.length && sections[this.nextSection]!.line < n) {
      this.active.push(sections[this.nextSection]!);
      this.nextSection++;
    }
    this.active = this.active.filter((s) => holds(s, n));
    return this.active.some((s) => this.isFolded(s));
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
