// xterm.js terminal for job output: ANSI colours, `\r` progress bars, bounded scrollback,
// search, clickable links. It follows the tail unless the reader scrolled up.

import { FitAddon } from '@xterm/addon-fit';
import { SearchAddon } from '@xterm/addon-search';
import { WebLinksAddon } from '@xterm/addon-web-links';
import { Terminal as XTerm } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { useEffect, useRef } from 'preact/hooks';

/** Lines kept in the terminal (about 12 bytes per cell); the full log is downloadable. */
export const SCROLLBACK_LINES = 20_000;

export interface TerminalHandle {
  term: XTerm;
  search: SearchAddon;
}

interface Props {
  onReady: (h: TerminalHandle) => void;
  onFollowChange: (following: boolean) => void;
  label: string;
}

export function Terminal({ onReady, onFollowChange, label }: Props) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = host.current!;
    const term = new XTerm({
      convertEol: true,
      disableStdin: true,
      cursorBlink: false,
      cursorInactiveStyle: 'none',
      scrollback: SCROLLBACK_LINES,
      fontSize: 13,
      lineHeight: 1.15,
      fontFamily: 'ui-monospace, "JetBrains Mono", "DejaVu Sans Mono", Menlo, Consolas, monospace',
      allowProposedApi: false,
      theme: {
        background: '#0d1117',
        foreground: '#d6dde6',
        cursor: '#0d1117',
        selectionBackground: '#3b5070',
        black: '#1f2430',
        red: '#ff6b6b',
        green: '#4fd67a',
        yellow: '#f5c451',
        blue: '#5aa9ff',
        magenta: '#d38cff',
        cyan: '#4dd6d6',
        white: '#d6dde6',
        brightBlack: '#6b7686',
        brightRed: '#ff8c8c',
        brightGreen: '#7ff0a0',
        brightYellow: '#ffd97a',
        brightBlue: '#86c1ff',
        brightMagenta: '#e3b0ff',
        brightCyan: '#7ff0f0',
        brightWhite: '#ffffff',
      },
    });
    const fit = new FitAddon();
    const search = new SearchAddon();
    term.loadAddon(fit);
    term.loadAddon(search);
    term.loadAddon(new WebLinksAddon());
    term.open(el);
    term.textarea?.setAttribute('aria-label', label);
    term.textarea?.setAttribute('aria-describedby', 'term-keys');
    // xterm keeps Tab, Shift+Tab and Escape for the terminal. Escape, then Tab (or Shift+Tab),
    // hands the key back to the page, so keyboard users can always leave the output.
    let escaped = false;
    term.attachCustomKeyEventHandler((e) => {
      if (e.type !== 'keydown') return !(escaped && e.key === 'Tab');
      if (e.key === 'Escape') {
        escaped = true;
        return false;
      }
      if (e.key === 'Tab' && escaped) {
        escaped = false;
        return false;
      }
      if (e.key !== 'Shift') escaped = false;
      return true;
    });
    const refit = () => {
      try {
        fit.fit();
      } catch {
        // not laid out yet
      }
    };
    refit();
    const ro = new ResizeObserver(() => refit());
    ro.observe(el);

    // Follow state: at the bottom means new output keeps the view on the tail (xterm's own
    // behaviour); scrolled up means the view stays put.
    let following = true;
    let pending = 0;
    const check = () => {
      pending = 0;
      const b = term.buffer.active;
      const now = b.viewportY >= b.baseY;
      if (now !== following) {
        following = now;
        onFollowChange(now);
      }
    };
    const schedule = () => {
      if (!pending) pending = requestAnimationFrame(check);
    };
    const d1 = term.onScroll(schedule);
    const d2 = term.onWriteParsed(schedule);
    el.addEventListener('wheel', schedule, { passive: true });

    onReady({ term, search });
    return () => {
      if (pending) cancelAnimationFrame(pending);
      ro.disconnect();
      d1.dispose();
      d2.dispose();
      el.removeEventListener('wheel', schedule);
      term.dispose();
    };
  }, []);
  return (
    <>
      <div class="term-host" ref={host} role="log" aria-label={label} data-testid="terminal" />
      <p id="term-keys" class="visually-hidden">
        Press Escape, then Tab, to leave the output.
      </p>
    </>
  );
}

// Log lines and terminal rows. The terminal cannot number or fold its rows, so the page keeps
// the line each row started with (the renderer's `RowMap`, `lib/logRender.ts`): the cursor's
// row is the last one started (or a fresh one after a newline), and each row above it that is
// not the wrapped continuation of the row before is the row started before it.

/** Which log line each row the page wrote starts. */
export interface RowMap {
  readonly rowCount: number;
  readonly atFreshRow: boolean;
  lineOfRow(i: number): number | null;
}

/** Visits the buffer's rows that start a written row, from the cursor's up, with the index of
 * the row in `map`, until `visit` returns true. */
function walkRows(term: XTerm, map: RowMap, visit: (bufferRow: number, index: number) => boolean): void {
  const b = term.buffer.active;
  let i = map.atFreshRow ? map.rowCount : map.rowCount - 1;
  for (let r = b.baseY + b.cursorY; r >= 0 && i >= 0; r--) {
    const row = b.getLine(r);
    if (!row) return;
    if (!row.isWrapped) {
      if (visit(r, i)) return;
      i--;
    }
  }
}

/** The buffer row where log line `n` starts, or null when the terminal does not hold it. */
export function rowOfLine(term: XTerm, map: RowMap, n: number): number | null {
  let found: number | null = null;
  walkRows(term, map, (r, i) => {
    const line = map.lineOfRow(i);
    if (line === n) found = r;
    return line !== null && line !== 0 && line < n;
  });
  return found;
}

/** The log line buffer row `row` (or the row it wraps from) holds; null for none or a notice. */
export function lineAtRow(term: XTerm, map: RowMap, row: number): number | null {
  let found: number | null = null;
  walkRows(term, map, (r, i) => {
    if (r > row) return false;
    found = map.lineOfRow(i) || null;
    return true;
  });
  return found;
}

/** The first log line the terminal still holds (null when it holds none). */
export function firstLineShown(term: XTerm, map: RowMap): number | null {
  let first: number | null = null;
  walkRows(term, map, (_r, i) => {
    const line = map.lineOfRow(i);
    if (line) first = line;
    return false;
  });
  return first;
}

/** Scrolls line `n` into view and selects it (the highlight); false when it is not held. */
export function showLine(term: XTerm, map: RowMap, n: number): boolean {
  const row = rowOfLine(term, map, n);
  if (row === null) return false;
  term.scrollToLine(Math.max(0, row - Math.floor(term.rows / 3)));
  term.selectLines(row, row);
  return true;
}
