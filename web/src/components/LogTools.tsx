// What the job page shows beside its terminal: the results of a search over the whole stored
// log (grouped by collapsible section), the sections of the log, and a viewer of numbered
// lines for the part the terminal no longer holds. Every line number links to `#L<n>`.

import { useEffect, useRef, useState } from 'preact/hooks';
import { fetchOutput, type OutputMatch } from '../api';
import { groupBySection, visibleText, type Section } from '../lib/logLines';

/** A search over the whole log as far as it went. */
export interface SearchState {
  query: string;
  caseSensitive: boolean;
  matches: OutputMatch[];
  /** Cursor to read on; null once the stored log was read to its end. */
  next: string | null;
  linesScanned: number;
  loading: boolean;
  error: string | null;
}

function sectionLabel(s: Section): string {
  return `${s.name} (lines ${s.line}–${s.end ?? '…'})`;
}

export function SearchResults({
  search,
  sectionOf,
  onMore,
  current,
}: {
  search: SearchState;
  sectionOf: (line: number) => Section | null;
  onMore: () => void;
  current: number | null;
}) {
  const groups = groupBySection(search.matches, sectionOf);
  const n = search.matches.length;
  return (
    <section class="log-results" aria-label="Search results">
      <p class="hint" role="status">
        {search.loading
          ? `Searching the whole log… (${search.linesScanned.toLocaleString('en')} lines read)`
          : `${n.toLocaleString('en')} ${n === 1 ? 'line matches' : 'lines match'} “${search.query}”${
              search.next ? ` in the first ${search.linesScanned.toLocaleString('en')} lines` : ` in the whole log (${search.linesScanned.toLocaleString('en')} lines)`
            }`}
        {search.next && !search.loading && (
          <>
            {' '}
            <button type="button" class="btn btn-small" onClick={onMore}>
              Search further
            </button>
          </>
        )}
      </p>
      {search.error && (
        <p class="alert alert-error" role="alert">
          {search.error}
        </p>
      )}
      {groups.map((g) => {
        const list = (
          <ol class="log-lines">
            {g.matches.map((m) => (
              <li key={m.line} class={m.line === current ? 'log-line current' : 'log-line'}>
                <a class="log-no" href={`#L${m.line}`} aria-label={`Line ${m.line}`}>
                  {m.line}
                </a>
                <span class="log-text">
                  {m.text}
                  {m.textTruncated && <span class="muted"> …</span>}
                </span>
              </li>
            ))}
          </ol>
        );
        return g.section ? (
          <details key={`s${g.section.line}`} open class="log-section">
            <summary>
              {sectionLabel(g.section)}: {g.matches.length} {g.matches.length === 1 ? 'match' : 'matches'}
            </summary>
            {list}
          </details>
        ) : (
          <div key={`n${g.matches[0]!.line}`}>{list}</div>
        );
      })}
    </section>
  );
}

/** The sections of the log: links to each, and buttons that fold or unfold them in the
 * terminal (also done by clicking a header row there). */
export function SectionList({
  sections,
  folded,
  onToggle,
  onFoldAll,
}: {
  sections: Section[];
  folded: (s: Section) => boolean;
  onToggle: (s: Section) => void;
  onFoldAll: (folded: boolean) => void;
}) {
  if (sections.length === 0) return null;
  return (
    <details class="log-sections">
      <summary>Sections ({sections.length})</summary>
      <p class="log-sections-all">
        <button type="button" class="btn btn-small" onClick={() => onFoldAll(true)}>
          Fold all
        </button>{' '}
        <button type="button" class="btn btn-small" onClick={() => onFoldAll(false)}>
          Unfold all
        </button>
      </p>
      <ol>
        {sections.map((s) => {
          const isFolded = folded(s);
          return (
            <li key={s.line} class={s.depth > 0 ? 'nested' : undefined}>
              <button
                type="button"
                class="btn btn-small fold-toggle"
                aria-pressed={isFolded}
                aria-label={`Fold ${s.name}`}
                title={isFolded ? 'Folded in the terminal: press to unfold' : 'Press to fold in the terminal'}
                onClick={() => onToggle(s)}
              >
                {isFolded ? '▸' : '▾'}
              </button>{' '}
              <a href={`#L${s.line}`}>{s.name}</a> <span class="muted">lines {s.line}–{s.end ?? '…'}</span>
            </li>
          );
        })}
      </ol>
    </details>
  );
}

/** Bytes fetched per "load more" of the lines viewer. */
const SLICE_BYTES = 256 * 1024;
/** Lines added per load. */
const PER_LOAD = 2000;
/** Most lines the viewer holds (the earliest go first). */
const MAX_LINES = 6000;

interface Line {
  line: number;
  text: string;
}

/**
 * Numbered lines from byte `offset` (where line `line` starts) on, fetched a slice at a time,
 * with line `target` highlighted and scrolled into view; sections fold.
 */
export function LinesViewer({
  jobId,
  line,
  offset,
  target,
  before,
  sectionOf,
  onClose,
}: {
  jobId: string;
  line: number;
  offset: number;
  target: number;
  /** The first line the terminal holds: the viewer stops there. */
  before: number;
  sectionOf: (line: number) => Section | null;
  onClose: () => void;
}) {
  const [lines, setLines] = useState<Line[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [more, setMore] = useState(true);
  const [loading, setLoading] = useState(false);
  const pos = useRef({ offset, line });
  const box = useRef<HTMLOListElement>(null);

  const load = async (replace: boolean) => {
    setLoading(true);
    try {
      const slice = await fetchOutput(jobId, pos.current.offset, SLICE_BYTES);
      if (slice.offset > pos.current.offset) {
        setError('The output cap dropped these lines meanwhile.');
        setMore(false);
        return;
      }
      const text = new TextDecoder().decode(slice.bytes);
      const parts = text.split('\n');
      // A last part without its newline is read again with the next slice (unless the log ends).
      const complete = slice.bytes.length < SLICE_BYTES ? parts.filter((p, i) => i < parts.length - 1 || p !== '') : parts.slice(0, -1);
      const got: Line[] = [];
      let at = pos.current.offset;
      let no = pos.current.line;
      for (const p of complete) {
        if (no >= before || got.length >= PER_LOAD) break;
        got.push({ line: no, text: visibleText(p) });
        at += new TextEncoder().encode(p).length + 1;
        no++;
      }
      pos.current = { offset: at, line: no };
      setMore(no < before && got.length > 0);
      setLines((prev) => (replace ? got : [...prev, ...got]).slice(-MAX_LINES));
    } catch (err) {
      setError(err instanceof Error ? err.message : 'Could not load the lines');
    } finally {
      setLoading(false);
    }
  };

  useEffect(() => {
    pos.current = { offset, line };
    setLines([]);
    setError(null);
    void load(true);
  }, [jobId, line, offset]);

  useEffect(() => {
    box.current?.querySelector(`[data-line="${target}"]`)?.scrollIntoView({ block: 'center' });
  }, [lines, target]);

  // Consecutive lines of one section fold together.
  const blocks = groupBySection(lines, sectionOf);
  const first = lines[0]?.line;
  const lastNo = lines[lines.length - 1]?.line;
  const row = (l: Line) => (
    <li key={l.line} data-line={l.line} class={l.line === target ? 'log-line current' : 'log-line'}>
      <a class="log-no" href={`#L${l.line}`} aria-label={`Line ${l.line}`}>
        {l.line}
      </a>
      <span class="log-text">{l.text}</span>
    </li>
  );
  return (
    <section class="log-viewer card" aria-label="Earlier lines">
      <div class="log-viewer-head">
        <h3>
          {first !== undefined ? `Lines ${first.toLocaleString('en')}–${lastNo!.toLocaleString('en')}` : 'Lines'}{' '}
          <span class="muted">(before what the terminal holds)</span>
        </h3>
        <button type="button" class="btn btn-small" onClick={onClose}>
          Close
        </button>
      </div>
      {error && (
        <p class="alert alert-error" role="alert">
          {error}
        </p>
      )}
      <ol class="log-lines log-scroll" ref={box}>
        {blocks.map((b) =>
          b.section ? (
            <li key={`s${b.matches[0]!.line}`} class="log-fold">
              <details open={b.section.open || b.matches.some((l) => l.line === target)}>
                <summary>{sectionLabel(b.section)}</summary>
                <ol class="log-lines">{b.matches.map(row)}</ol>
              </details>
            </li>
          ) : (
            b.matches.map(row)
          ),
        )}
      </ol>
      {more && (
        <button type="button" class="btn btn-small" disabled={loading} onClick={() => void load(false)}>
          {loading ? 'Loading…' : 'Load more lines'}
        </button>
      )}
    </section>
  );
}
