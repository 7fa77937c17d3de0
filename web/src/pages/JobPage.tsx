import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, fetchOutput, outputUrl, searchOutput } from '../api';
import { Artifacts } from '../components/Artifacts';
import { EmptyState, ErrorBanner, PageHeader } from '../components/Layout';
import { Link } from '../components/Link';
import { StatusBadge } from '../components/StatusBadge';
import { LinesViewer, SearchResults, SectionList, type SearchState } from '../components/LogTools';
import { Terminal, SCROLLBACK_LINES, firstLineShown, lineAtRow, rowOfLine, showLine, type TerminalHandle } from '../components/Terminal';
import { useNow } from '../components/useNow';
import {
  failureLabel,
  formatBytes,
  formatDuration,
  formatTime,
  jobDurationMs,
  shortId,
} from '../lib/format';
import { isNewer, isTerminal } from '../lib/jobs';
import { LineTracker, lineFromHash, type Section } from '../lib/logLines';
import { LogRenderer, STAMP_COLUMNS } from '../lib/logRender';
import { OutputFollower } from '../lib/outputFollower';
import { jobPath } from '../lib/routes';
import { navigate } from '../state';
import type { JobSummary, JobView, WindowSize } from '../types';
import { hubSocket } from '../ws';

/** Where the page remembers whether lines show their times. */
const TIMESTAMPS_KEY = 'cmdx.timestamps';

type Load = { state: 'loading' } | { state: 'notFound' } | { state: 'error'; message: string } | { state: 'ok'; job: JobView };

/** Applies a live summary to the full view, if it is not older than what we have. */
function merge(job: JobView, s: JobSummary): JobView {
  if (!isNewer({ ...s, status: job.status, attempt: job.attempt }, s)) return job;
  return {
    ...job,
    status: s.status,
    workerId: s.workerId,
    attempt: s.attempt,
    startedAt: s.startedAt,
    completedAt: s.completedAt,
    exitCode: s.exitCode,
    failure: s.failure,
    outputBytes: Math.max(job.outputBytes, s.outputBytes),
  };
}

export function JobPage({ jobId }: { jobId: string }) {
  const [load, setLoad] = useState<Load>({ state: 'loading' });
  const [actionError, setActionError] = useState<string | null>(null);
  const [busy, setBusy] = useState<'cancel' | 'rerun' | null>(null);
  const [following, setFollowing] = useState(true);
  const [query, setQuery] = useState('');
  const [caseSensitive, setCaseSensitive] = useState(false);
  const [searchNote, setSearchNote] = useState<string | null>(null);
  const [search, setSearch] = useState<SearchState | null>(null);
  const [hit, setHit] = useState(-1);
  const [hasOutput, setHasOutput] = useState(false);
  // Lines of the log so far, and the first one the terminal still holds.
  const [lineCount, setLineCount] = useState({ total: 0, first: 1 });
  const [sections, setSections] = useState<Section[]>([]);
  const [viewer, setViewer] = useState<{ line: number; offset: number; target: number; before: number } | null>(null);
  const [currentLine, setCurrentLine] = useState<number | null>(null);
  const tracker = useRef(new LineTracker());
  const [timestamps, setTimestamps] = useState(() => localStorage.getItem(TIMESTAMPS_KEY) === 'on');
  const renderer = useRef<LogRenderer | null>(null);
  /** The page terminal's size, and whether the job's terminal follows it (once asked to). */
  const [viewSize, setViewSize] = useState<WindowSize | null>(null);
  const [fitting, setFitting] = useState(false);
  /** Bumped when sections fold or unfold, to draw their list again. */
  const [, setFoldsVersion] = useState(0);
  const followerRef = useRef<OutputFollower | null>(null);
  /** The log offset of the first byte the tracker took (the first stored byte). */
  const baseOffset = () => (followerRef.current?.offset ?? 0) - tracker.current.bytes;
  const pendingLine = useRef<number | null>(lineFromHash(window.location.hash));
  const term = useRef<TerminalHandle | null>(null);
  const unsub = useRef<(() => void) | null>(null);
  const restart = useRef<(() => void) | null>(null);
  const attemptSeen = useRef(0);
  const latest = useRef<JobSummary | null>(null);
  const now = useNow(1000);

  const refresh = async () => {
    try {
      let job = await api.job(jobId);
      // An event may have arrived while this request was in flight, with a newer state than
      // the snapshot: apply it on top.
      if (latest.current) job = merge(job, latest.current);
      attemptSeen.current = Math.max(attemptSeen.current, job.attempt);
      setLoad((prev) => (prev.state === 'ok' && isTerminal(prev.job.status) && !isTerminal(job.status) ? prev : { state: 'ok', job }));
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 403)) setLoad({ state: 'notFound' });
      else setLoad((prev) => (prev.state === 'ok' ? prev : { state: 'error', message: err instanceof Error ? err.message : 'Could not load the job' }));
    }
  };

  // Safety net while the job is live: events can be dropped by a lagging hub feed.
  const live = load.state === 'ok' && !isTerminal(load.job.status);
  useEffect(() => {
    if (!live) return;
    const t = setInterval(() => void refresh(), 10_000);
    return () => clearInterval(t);
  }, [live, jobId]);

  useEffect(() => {
    setLoad({ state: 'loading' });
    setActionError(null);
    void refresh();
    const offJob = hubSocket.onJob((s) => {
      if (s.jobId !== jobId) return;
      latest.current = s;
      setLoad((prev) => (prev.state === 'ok' ? { state: 'ok', job: merge(prev.job, s) } : prev));
      if (isTerminal(s.status)) void refresh();
      // A requeued job (worker lost) starts a new attempt: replay its log from the start, so
      // the page is right whether the hub appends the new attempt's output or restarts it.
      if (s.attempt > attemptSeen.current && attemptSeen.current > 0 && !isTerminal(s.status)) {
        attemptSeen.current = s.attempt;
        restart.current?.();
      } else {
        attemptSeen.current = Math.max(attemptSeen.current, s.attempt);
      }
    });
    const offOpen = hubSocket.onOpen(() => void refresh());
    return () => {
      offJob();
      offOpen();
      unsub.current?.();
      unsub.current = null;
      restart.current = null;
    };
  }, [jobId]);

  // Once the terminal exists: replay the stored log from 0 and follow it live. A log complete
  // when the page opened folds its sections as their markers ask (GitHub Actions groups,
  // Buildkite `---`); a live one shows everything as it comes, the reader folds.
  const onReady = (h: TerminalHandle, complete: boolean) => {
    term.current = h;
    setViewSize({ cols: h.term.cols, rows: h.term.rows });
    h.term.onResize((size) => setViewSize(size));
    const fresh = (foldByDefault: boolean) => {
      tracker.current = new LineTracker();
      const shown = renderer.current?.options.timestamps ?? timestamps;
      renderer.current = new LogRenderer(tracker.current, { timestamps: shown, foldByDefault });
    };
    fresh(complete);
    restart.current = () => {
      unsub.current?.();
      h.term.write('\x1bc'); // RIS through the write queue: `reset()` acts before queued writes
      fresh(false);
      setHasOutput(false);
      follow(h);
    };
    h.term.registerLinkProvider({
      // A section's header row folds or unfolds it when clicked.
      provideLinks: (y, done) => {
        const r = renderer.current;
        const line = r ? lineAtRow(h.term, r, y - 1) : null;
        const s = line === null ? undefined : tracker.current.sections.find((x) => x.line === line);
        const text = h.term.buffer.active.getLine(y - 1)?.translateToString(true) ?? '';
        if (!s || !text) return done(undefined);
        done([
          {
            range: { start: { x: 1, y }, end: { x: text.length, y } },
            text,
            decorations: { pointerCursor: true, underline: false },
            activate: () => toggleSection(s),
          },
        ]);
      },
    });
    follow(h);
  };

  const follow = (h: TerminalHandle) => {
    let seen = false;
    const follower = new OutputFollower({
      write: (d, time) => {
        const r = renderer.current!;
        if (!seen && d.length > 0) {
          seen = true;
          setHasOutput(true);
        }
        if (typeof d === 'string') {
          h.term.write(r.notice(d));
          return;
        }
        h.term.write(r.push(d, time));
        countSoon();
        const want = pendingLine.current;
        if (want !== null && tracker.current.lines >= want) goToLine(want);
      },
      fetchFrom: (offset) => fetchOutput(jobId, offset),
      resubscribe: () => hubSocket.resubscribeOutput(jobId),
      onComplete: (end) => {
        const r = renderer.current!;
        h.term.write(r.end());
        // A failed job's last section is where it failed: show it (as Buildkite does).
        const last = tracker.current.sectionOf(tracker.current.lines);
        if (end.status !== 'completed' && last && r.isFolded(last)) {
          r.setFolded(last, false);
          rerender();
        }
        void refresh();
        countSoon();
        // Also a line shown early in the replay and trimmed from the terminal since.
        const n = pendingLine.current ?? lineFromHash(window.location.hash);
        if (n !== null) goToLine(n);
      },
    });
    followerRef.current = follower;
    const off = hubSocket.subscribeOutput(jobId, () => follower.offset, (m) => follower.handle(m));
    unsub.current = () => {
      follower.stop();
      off();
    };
  };

  // Line counts and sections are refreshed at most every 300 ms while output streams in.
  const countTimer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const countSoon = () => {
    if (countTimer.current) return;
    countTimer.current = setTimeout(() => {
      countTimer.current = null;
      const h = term.current;
      if (!h) return;
      h.term.write('', () => {
        const t = tracker.current;
        setLineCount({ total: t.lines, first: firstLineShown(h.term, renderer.current!) ?? 1 });
        setSections([...t.sections]);
      });
    }, 300);
  };
  useEffect(() => () => {
    if (countTimer.current) clearTimeout(countTimer.current);
  }, []);

  /** Writes the log to the terminal again (after folding or unfolding, or turning timestamps
   * on or off), keeping the view on the line at its top unless it followed the end; then
   * calls `then`. Waits for the writes queued before it, so the rows map to lines. */
  const rerender = (then?: () => void) => {
    const h = term.current;
    const r = renderer.current;
    if (!h || !r) return;
    setFoldsVersion((v) => v + 1);
    h.term.write('', () => {
      const b = h.term.buffer.active;
      const following = b.viewportY >= b.baseY;
      const top = lineAtRow(h.term, r, b.viewportY);
      // A reset through the write queue (RIS), as `reset()` would act before queued writes.
      h.term.write('\x1bc');
      for (const part of r.rerender(SCROLLBACK_LINES + h.term.rows)) h.term.write(part);
      h.term.write('', () => {
        if (following || top === null) h.term.scrollToBottom();
        else {
          // The line at the top, or the header of the section that now hides it.
          let line = top;
          while (line > 1 && r.hidden(line)) line--;
          const row = rowOfLine(h.term, r, line);
          if (row !== null) h.term.scrollToLine(row);
        }
        countSoon();
        then?.();
      });
    });
  };

  const toggleSection = (s: Section) => {
    const r = renderer.current;
    if (!r) return;
    r.setFolded(s, !r.isFolded(s));
    rerender();
  };
  const foldAll = (folded: boolean) => {
    renderer.current?.setAllFolded(folded);
    rerender();
  };
  const showTimestamps = (on: boolean) => {
    setTimestamps(on);
    localStorage.setItem(TIMESTAMPS_KEY, on ? 'on' : 'off');
    renderer.current?.setOptions({ timestamps: on });
    rerender();
  };

  /** Shows line `n`: in the terminal when it holds it, else in the lines viewer. */
  const goToLine = (n: number, offset?: number) => {
    const h = term.current;
    if (!h) return;
    pendingLine.current = null;
    // A line in a folded section: unfold it first.
    if (renderer.current?.reveal(n)) {
      rerender(() => goToLine(n, offset));
      return;
    }
    h.term.write('', () => {
      const t = tracker.current;
      setCurrentLine(n);
      if (n > t.lines) {
        // Not written yet: try again as output comes.
        pendingLine.current = n;
        setSearchNote(`Line ${n} is not in the log yet`);
        return;
      }
      if (showLine(h.term, renderer.current!, n)) {
        setViewer(null);
        return;
      }
      const first = firstLineShown(h.term, renderer.current!) ?? t.lines + 1;
      // From the checkpoint before it, for context (a search's offset when there is none).
      const c = t.checkpointFor(n);
      const from = c.line > 1 || offset === undefined ? { line: c.line, offset: baseOffset() + c.at } : { line: n, offset };
      setViewer({ ...from, target: n, before: first });
    });
  };

  // While the job's terminal follows this view, a resize of the page's terminal (its corner
  // dragged, the window resized, timestamps taking columns) resizes the job's, as `ssh -t`
  // does on SIGWINCH: the job's programs see SIGWINCH and the new size.
  const job0 = load.state === 'ok' ? load.job : null;
  const target = viewSize && { cols: Math.max(1, viewSize.cols - (timestamps ? STAMP_COLUMNS : 0)), rows: viewSize.rows };
  const canResize = !!job0?.ttySize && (job0.status === 'running' || job0.status === 'assigned');
  useEffect(() => {
    if (!fitting || !canResize || !target || !job0) return;
    if (job0.ttySize?.cols === target.cols && job0.ttySize?.rows === target.rows) return;
    const t = setTimeout(() => {
      api
        .resizeJob(job0.jobId, target.cols, target.rows)
        .then((r) => setLoad((prev) => (prev.state === 'ok' ? { state: 'ok', job: { ...prev.job, ttySize: r.ttySize } } : prev)))
        .catch((err) => {
          // Finished meanwhile: nothing to follow any more.
          if (err instanceof ApiError && err.status === 409) setFitting(false);
          else setActionError(err instanceof Error ? err.message : 'Could not resize the job’s terminal');
        });
    }, 200);
    return () => clearTimeout(t);
  }, [fitting, canResize, target?.cols, target?.rows, job0?.ttySize?.cols, job0?.ttySize?.rows]);

  // `#L123` links (search results, line numbers, a shared URL) go to their line.
  useEffect(() => {
    const onHash = () => {
      const n = lineFromHash(window.location.hash);
      if (n !== null) goToLine(n, search?.matches.find((m) => m.line === n)?.offset);
    };
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, [search]);

  if (load.state === 'loading') {
    return <p class="muted" role="status">Loading job…</p>;
  }
  if (load.state === 'notFound') {
    return (
      <>
        <PageHeader title="Job not found" />
        <EmptyState title="There is no job with this id that you can see">
          <p>
            <code>{jobId}</code> does not exist or belongs to someone else. <Link href="/jobs">Back to jobs</Link>
          </p>
        </EmptyState>
      </>
    );
  }
  if (load.state === 'error') {
    return (
      <>
        <PageHeader title="Job" />
        <ErrorBanner error={load.message} />
        <button type="button" class="btn" onClick={() => void refresh()}>
          Retry
        </button>
      </>
    );
  }

  const job = load.job;
  const terminal = isTerminal(job.status);
  const duration = job.startedAt
    ? (terminal && job.result ? job.result.duration : jobDurationMs(job.startedAt, job.completedAt, now))
    : null;

  const cancel = async () => {
    setBusy('cancel');
    setActionError(null);
    try {
      await api.cancel(job.jobId);
      setLoad((prev) => (prev.state === 'ok' ? { state: 'ok', job: { ...prev.job, cancelRequested: true } } : prev));
      void refresh();
    } catch (err) {
      setActionError(err instanceof Error ? err.message : 'Could not cancel');
    } finally {
      setBusy(null);
    }
  };

  const runAgain = async () => {
    setBusy('rerun');
    setActionError(null);
    try {
      const res = await api.rerun(job.jobId);
      navigate(jobPath(res.jobId));
    } catch (err) {
      setActionError(err instanceof Error ? err.message : 'Could not submit');
      setBusy(null);
    }
  };

  /** Runs (or continues) the search over the whole stored log; returns the state after it. */
  const runSearch = async (prev: SearchState | null): Promise<SearchState | null> => {
    const base: SearchState = prev ?? { query, caseSensitive, matches: [], next: null, linesScanned: 0, loading: true, error: null };
    setSearch({ ...base, loading: true });
    try {
      let st = base;
      let cursor = prev?.next ?? null;
      // Pages until a match or the end: the hub reads 8 MiB per request at most.
      do {
        const page = await searchOutput(job.jobId, st.query, st.caseSensitive, cursor);
        cursor = page.next ?? null;
        st = { ...st, matches: [...st.matches, ...page.matches], next: cursor, linesScanned: st.linesScanned + page.linesScanned };
        setSearch({ ...st, loading: cursor !== null });
      } while (cursor !== null && st.matches.length === (prev?.matches.length ?? 0));
      st = { ...st, loading: false };
      setSearch(st);
      return st;
    } catch (err) {
      const st = { ...base, loading: false, error: err instanceof Error ? err.message : 'Search failed' };
      setSearch(st);
      return null;
    }
  };

  const find = async (forward: boolean) => {
    if (!query) return;
    let st = search;
    let i = hit;
    if (!st || st.query !== query || st.caseSensitive !== caseSensitive) {
      st = await runSearch(null);
      i = -1;
    } else if (forward && i + 1 >= st.matches.length && st.next) {
      st = await runSearch(st);
    }
    if (!st) return;
    if (st.matches.length === 0) {
      setSearchNote('No matches');
      return;
    }
    const n = st.matches.length;
    const next = forward ? (i + 1) % n : (i - 1 + n) % n;
    setHit(next);
    const m = st.matches[next]!;
    setSearchNote(`Match ${next + 1} of ${n}${st.next ? '+' : ''}`);
    history.replaceState(null, '', `#L${m.line}`);
    goToLine(m.line, m.offset);
  };

  return (
    <>
      <PageHeader
        title={
          <span class="job-title">
            Job <span class="mono">{shortId(job.jobId)}</span> <StatusBadge status={job.status} />
          </span>
        }
      >
        {!terminal && (
          <button type="button" class="btn btn-danger" onClick={() => void cancel()} disabled={busy !== null || job.cancelRequested}>
            {job.cancelRequested ? 'Cancelling…' : 'Cancel'}
          </button>
        )}
        <button type="button" class="btn" onClick={() => void runAgain()} disabled={busy !== null}>
          {busy === 'rerun' ? 'Starting…' : 'Run again'}
        </button>
        <Link href={`/jobs/new?from=${encodeURIComponent(job.jobId)}`} class="btn">
          Edit and run
        </Link>
        <a class="btn" href={outputUrl(job.jobId)} download={`cmdx-${job.jobId}.log`}>
          Download log
        </a>
      </PageHeader>
      <ErrorBanner error={actionError} />
      {job.status === 'queued' && job.noMatchingWorker && (
        <div class="alert alert-error" role="status">
          No connected worker can run this job
          {job.tags.length > 0 ? ` (it needs tags ${job.tags.join(', ')})` : ''}: it waits until one connects.
        </div>
      )}
      {job.status === 'queued' && job.queuePosition !== null && job.queuePosition !== undefined && (
        <div class="alert alert-info" role="status">
          Queued, position {job.queuePosition}
          {waitText(job)}.
        </div>
      )}
      <section class="card job-summary" aria-label="Job details">
        <pre class="command" aria-label="Command">
          <code>{job.command}</code>
        </pre>
        <dl class="facts">
          <Fact label="Status">
            <StatusBadge status={job.status} />
            {job.cancelRequested && !terminal && <span class="muted"> (cancel requested)</span>}
          </Fact>
          <Fact label="Exit code">
            <span class="mono">{job.exitCode ?? '—'}</span>
            {job.signal !== null && <span class="mono"> (signal {job.signal})</span>}
          </Fact>
          <Fact label="Failure">{job.failure ? failureLabel(job.failure) : '—'}</Fact>
          <Fact label="Duration">{formatDuration(duration)}</Fact>
          <Fact label="Worker">
            <span class="mono">{job.workerId ?? '—'}</span>
          </Fact>
          <Fact label="Attempt">
            {job.attempt === 0 ? '—' : job.maxAttempts > 1 ? `${job.attempt} of ${job.maxAttempts}` : job.attempt}
          </Fact>
          <Fact label="Peak memory">{formatBytes(job.peakMemoryBytes)}</Fact>
          <Fact label="CPU time">{job.cpuMs === null ? '—' : formatDuration(job.cpuMs)}</Fact>
          <Fact label="Timeout">{formatDuration(job.timeout * 1000)}</Fact>
          <Fact label="Priority">{job.priority ?? 0}</Fact>
          <Fact label="Created">{formatTime(job.createdAt)}</Fact>
          <Fact label="Started">{formatTime(job.startedAt)}</Fact>
          <Fact label="Finished">{formatTime(job.completedAt)}</Fact>
          <Fact label="Output">
            {formatBytes(job.outputBytes)}
            {job.outputTruncated && <span class="muted"> (head dropped by the cap)</span>}
          </Fact>
          <Fact label="Tags">{job.tags.length > 0 ? job.tags.join(', ') : '—'}</Fact>
          {job.envKeys.length > 0 && (
            <Fact label="Environment">
              <span class="mono" title="Values are not shown">
                {job.envKeys.join(', ')}
              </span>
            </Fact>
          )}
          <Fact label="Image">
            {job.image ? (
              <span class="mono" title={job.imageDigest ?? undefined}>
                {job.image}
              </span>
            ) : (
              'worker host'
            )}
            {job.pullMs != null && job.pullMs > 0 && (
              <span class="muted"> (pulled in {formatDuration(job.pullMs)})</span>
            )}
          </Fact>
          {job.fileUrl && (
            <Fact label="Files">
              <a href={job.fileUrl} download>
                Project ZIP
              </a>
            </Fact>
          )}
        </dl>
        {job.error && (
          <div class="alert alert-error" role="alert">
            <strong>Error:</strong> {job.error}
          </div>
        )}
      </section>

      <section class="output" aria-label="Output">
        <a
          class="skip-link"
          href="#after-output"
          onClick={(e) => {
            e.preventDefault();
            document.getElementById('after-output')?.focus();
          }}
        >
          Skip past the output
        </a>
        <div class="output-toolbar">
          <h2>Output</h2>
          <div class="field field-inline output-search">
            <label for="output-search">Search output</label>
            <input
              id="output-search"
              type="search"
              value={query}
              onInput={(e) => {
                setQuery(e.currentTarget.value);
                setSearchNote(null);
                setHit(-1);
              }}
              onKeyDown={(e) => {
                if (e.key === 'Enter') {
                  e.preventDefault();
                  void find(!e.shiftKey);
                }
              }}
            />
            <label class="check">
              <input type="checkbox" checked={caseSensitive} onChange={(e) => setCaseSensitive(e.currentTarget.checked)} /> Match case
            </label>
            <button type="button" class="btn btn-small" onClick={() => void find(false)} disabled={!query}>
              Previous
            </button>
            <button type="button" class="btn btn-small" onClick={() => void find(true)} disabled={!query}>
              Next
            </button>
            {searchNote && <span class="muted" role="status">{searchNote}</span>}
          </div>
          <label class="check" title={`When the hub stored each line, in your time zone (${timeZoneName()})`}>
            <input type="checkbox" checked={timestamps} onChange={(e) => showTimestamps(e.currentTarget.checked)} /> Timestamps
          </label>
          <div class="follow">
            {following ? (
              <span class="muted" title="New output scrolls into view">
                {terminal ? 'At the end' : 'Following'}
              </span>
            ) : (
              <button type="button" class="btn btn-small" onClick={() => term.current?.term.scrollToBottom()}>
                Jump to end
              </button>
            )}
          </div>
        </div>
        <div class="term-wrap">
          <Terminal key={job.jobId} label="Job output" onReady={(h) => onReady(h, terminal)} onFollowChange={setFollowing} />
          {!hasOutput && (
            <div class="term-empty" role="status">
              {terminal
                ? 'This job printed no output.'
                : job.status === 'running'
                  ? 'Running: waiting for output…'
                  : 'Waiting for a worker…'}
            </div>
          )}
        </div>
        {lineCount.first > 1 ? (
          <p class="alert alert-info log-truncated" role="status">
            The terminal holds the last lines only: lines 1–{(lineCount.first - 1).toLocaleString('en')} of{' '}
            {lineCount.total.toLocaleString('en')} are not shown. Search covers the whole log.{' '}
            <button
              type="button"
              class="btn btn-small"
              onClick={() => setViewer({ line: 1, offset: baseOffset(), target: 1, before: lineCount.first })}
            >
              Show earlier lines
            </button>{' '}
            <a href={outputUrl(job.jobId)} download={`cmdx-${job.jobId}.log`}>
              Download the full log
            </a>
          </p>
        ) : (
          <p class="hint">
            {lineCount.total > 0 && `${lineCount.total.toLocaleString('en')} ${lineCount.total === 1 ? 'line' : 'lines'}. `}
            The terminal keeps the last {SCROLLBACK_LINES.toLocaleString('en')} lines; the full log is in{' '}
            <a href={outputUrl(job.jobId)} download={`cmdx-${job.jobId}.log`}>
              the download
            </a>
            .
          </p>
        )}
        <SectionList
          sections={sections}
          folded={(s) => renderer.current?.isFolded(s) ?? false}
          onToggle={toggleSection}
          onFoldAll={foldAll}
        />
        {viewer && (
          <LinesViewer
            jobId={job.jobId}
            line={viewer.line}
            offset={viewer.offset}
            target={viewer.target}
            before={viewer.before}
            sectionOf={(n) => tracker.current.sectionOf(n)}
            onClose={() => setViewer(null)}
          />
        )}
        {search && (
          <SearchResults
            search={search}
            sectionOf={(n) => tracker.current.sectionOf(n)}
            onMore={() => void runSearch(search)}
            current={currentLine}
          />
        )}
        <p class="hint">Drag the terminal's bottom-right corner to resize it; Escape, then Tab, leaves it.</p>
        <TermSize job={job} target={target} canResize={canResize} fitting={fitting} onFit={() => setFitting(true)} />
        <div id="after-output" tabIndex={-1} />
      </section>

      <Artifacts job={job} />

      <section class="card" aria-label="Attempts">
        <h2>Attempts</h2>
        {job.attempts.length === 0 ? (
          <p class="muted">Not assigned to a worker yet.</p>
        ) : (
          <div class="table-wrap">
            <table class="table">
              <thead>
                <tr>
                  <th scope="col">Attempt</th>
                  <th scope="col">Worker</th>
                  <th scope="col">Assigned</th>
                  <th scope="col">Ended</th>
                  <th scope="col">Outcome</th>
                </tr>
              </thead>
              <tbody>
                {job.attempts.map((a) => (
                  <tr key={a.attempt}>
                    <td>{a.attempt}</td>
                    <td class="mono">{a.workerId}</td>
                    <td>{formatTime(a.assignedAt)}</td>
                    <td>{formatTime(a.endedAt)}</td>
                    <td>{a.end ? a.end.replace(/_/g, ' ') : terminal ? '—' : 'in progress'}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </>
  );
}

function Fact({ label, children }: { label: string; children: preact.ComponentChildren }) {
  return (
    <div class="fact">
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}

/** Why a queued job waits, as the end of the "Queued, position N" sentence. */
function waitText(job: JobView): string {
  switch (job.waitReason) {
    case 'user_at_running_quota':
      return ': its owner has as many jobs running as their quota allows';
    case 'behind_higher_priority':
      return ', behind jobs of a higher priority';
    default:
      return job.tags.length > 0 ? `, waiting for a worker with tags ${job.tags.join(', ')}` : ', waiting for a free worker';
  }
}

/** The viewer's time zone, as timestamps are shown in it. */
function timeZoneName(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';
}

/** The job's terminal size, and a way to make it follow the page's terminal while it runs. */
function TermSize({
  job,
  target,
  canResize,
  fitting,
  onFit,
}: {
  job: JobView;
  target: WindowSize | null;
  canResize: boolean;
  fitting: boolean;
  onFit: () => void;
}) {
  const size = job.ttySize;
  if (!size) return <p class="hint">The job writes to pipes, not a terminal.</p>;
  const now = `${size.cols}×${size.rows}`;
  if (!canResize) {
    return <p class="hint">{isTerminal(job.status) ? `The job ran in a ${now} terminal.` : `The job's terminal will be ${now}.`}</p>;
  }
  const same = !!target && target.cols === size.cols && target.rows === size.rows;
  return (
    <p class="hint term-size" role="status">
      The job's terminal is <span class="mono">{now}</span>
      {fitting ? ', following this view.' : '.'}
      {!fitting && target && !same && (
        <>
          {' '}
          <button type="button" class="btn btn-small" onClick={onFit}>
            Fit it to this view ({target.cols}×{target.rows})
          </button>
        </>
      )}
    </p>
  );
}
