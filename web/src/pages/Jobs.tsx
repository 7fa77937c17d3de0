import { useEffect, useReducer, useRef, useState } from 'preact/hooks';
import { api } from '../api';
import { EmptyState, ErrorBanner, PageHeader } from '../components/Layout';
import { Link } from '../components/Link';
import { StatusBadge } from '../components/StatusBadge';
import { commandPreview, formatDuration, formatRelative, formatTime, jobDurationMs, shortId } from '../lib/format';
import {
  filterFromSearch,
  initialJobsState,
  jobsReducer,
  listQuery,
  searchOfFilter,
  type JobsFilter,
} from '../lib/jobs';
import { jobPath } from '../lib/routes';
import { JOB_STATUSES, type JobStatus, type JobSummary } from '../types';
import { hubSocket } from '../ws';
import { useNow } from '../components/useNow';
import { currentUser, location$ } from '../state';

const PAGE_SIZE = 50;

export function Jobs() {
  // The filter lives in the URL (`?status=&q=`): reload, back/forward and shared links keep it.
  const [state, dispatch] = useReducer(jobsReducer, undefined, () =>
    initialJobsState(filterFromSearch(location$.value.search)),
  );
  const [search, setSearch] = useState(state.filter.q);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const seq = useRef(0);
  const now = useNow(1000);
  const isAdmin = currentUser.value?.role === 'admin';
  const [owners, setOwners] = useState<Record<string, string>>({});

  // Admins see everyone's jobs: name the owners.
  useEffect(() => {
    if (!isAdmin) return;
    api.users().then(
      (r) => setOwners(Object.fromEntries(r.users.map((u) => [u.id, u.email]))),
      () => {},
    );
  }, [isAdmin]);

  // Events that arrive while a page loads may be newer than the page's snapshot: replay them
  // on top of it (the reducer ignores whatever is older).
  const during = useRef<JobSummary[] | null>(null);

  const load = async (filter: JobsFilter, cursor: string | null, previous: (string | null)[]) => {
    const mine = ++seq.current;
    setLoading(true);
    during.current = [];
    try {
      const list = await api.jobs(listQuery(filter, cursor, PAGE_SIZE));
      if (mine !== seq.current) return;
      dispatch({ type: 'loaded', list, cursor, previous, limit: PAGE_SIZE });
      for (const job of during.current ?? []) dispatch({ type: 'live', job });
      during.current = null;
      setError(null);
    } catch (err) {
      if (mine !== seq.current) return;
      setError(err instanceof Error ? err.message : 'Could not load jobs');
    } finally {
      if (mine === seq.current) setLoading(false);
    }
  };

  // Live updates, and a refetch of the current page after a reconnect.
  const stateRef = useRef(state);
  stateRef.current = state;
  useEffect(() => {
    const offJob = hubSocket.onJob((job) => {
      during.current?.push(job);
      dispatch({ type: 'live', job });
    });
    const offOpen = hubSocket.onOpen(() => {
      const s = stateRef.current;
      void load(s.filter, s.cursor, s.previous);
    });
    return () => {
      offJob();
      offOpen();
    };
  }, []);

  useEffect(() => {
    void load(state.filter, null, []);
  }, [state.filter]);

  // Back and forward: the URL's filter wins.
  const urlSearch = location$.value.search;
  useEffect(() => {
    const f = filterFromSearch(urlSearch);
    if (f.status !== state.filter.status || f.q !== state.filter.q) {
      dispatch({ type: 'filter', filter: f });
      setSearch(f.q);
    }
  }, [urlSearch]);

  /** Applies `filter` and records it in the URL (a new history entry, or in place). */
  const applyFilter = (filter: JobsFilter, replace: boolean) => {
    dispatch({ type: 'filter', filter });
    const path = location$.value.pathname === '/' ? '/' : '/jobs';
    const url = `${path}${searchOfFilter(filter)}`;
    if (url !== location$.value.pathname + location$.value.search) {
      if (replace) history.replaceState(null, '', url);
      else history.pushState(null, '', url);
      location$.value = { pathname: path, search: searchOfFilter(filter) };
    }
  };

  // Debounced command search (typing replaces the history entry instead of adding one per key).
  useEffect(() => {
    if (search === state.filter.q) return;
    const t = setTimeout(() => applyFilter({ ...state.filter, q: search }, true), 250);
    return () => clearTimeout(t);
  }, [search]);

  const setStatus = (status: JobStatus | '') => applyFilter({ ...state.filter, status }, false);
  const older = () => void load(state.filter, state.nextCursor, [...state.previous, state.cursor]);
  const newer = () => {
    const previous = state.previous.slice();
    const cursor = previous.pop() ?? null;
    void load(state.filter, cursor, previous);
  };
  const filtered = state.filter.status !== '' || state.filter.q.trim() !== '';

  return (
    <>
      <PageHeader title="Jobs">
        <Link href="/jobs/new" class="btn btn-primary">
          New job
        </Link>
      </PageHeader>
      <div class="toolbar" role="search">
        <div class="field field-inline">
          <label for="jobs-status">Status</label>
          <select
            id="jobs-status"
            value={state.filter.status}
            onChange={(e) => setStatus(e.currentTarget.value as JobStatus | '')}
          >
            <option value="">All</option>
            {JOB_STATUSES.map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </div>
        <div class="field field-inline field-grow">
          <label for="jobs-search">Search commands</label>
          <input
            id="jobs-search"
            type="search"
            placeholder="e.g. make test"
            value={search}
            onInput={(e) => setSearch(e.currentTarget.value)}
          />
        </div>
      </div>
      <ErrorBanner error={error} />
      {state.newerHidden > 0 && (
        <div class="alert alert-info" role="status">
          {state.newerHidden} newer {state.newerHidden === 1 ? 'job' : 'jobs'} on the first page.{' '}
          <button type="button" class="btn-link" onClick={() => void load(state.filter, null, [])}>
            Show newest
          </button>
        </div>
      )}
      {state.jobs.length === 0 && loading ? (
        <p class="muted" role="status">
          Loading jobs…
        </p>
      ) : state.jobs.length === 0 && !error ? (
        filtered ? (
          <EmptyState title="No jobs match this filter">Try another status or search text.</EmptyState>
        ) : (
          <EmptyState title="No jobs yet">
            Upload a project and run a command: <Link href="/jobs/new">New job</Link>.
          </EmptyState>
        )
      ) : (
        <div class="table-wrap" aria-busy={loading}>
          <table class="table jobs-table">
            <thead>
              <tr>
                <th scope="col">Status</th>
                <th scope="col">Command</th>
                <th scope="col" class="hide-narrow">Job</th>
                {isAdmin && (
                  <th scope="col" class="hide-narrow">
                    Owner
                  </th>
                )}
                <th scope="col" class="hide-narrow">Worker</th>
                <th scope="col" class="hide-narrow">Exit</th>
                <th scope="col" class="hide-narrow">Duration</th>
                <th scope="col" class="col-created">
                  Created
                </th>
              </tr>
            </thead>
            <tbody>
              {state.jobs.map((j) => (
                <tr key={j.jobId} data-job-id={j.jobId}>
                  <td>
                    <StatusBadge status={j.status} />
                  </td>
                  <td class="cmd-cell">
                    <Link href={jobPath(j.jobId)} class="cmd-link" title={j.command}>
                      <code>{commandPreview(j.command)}</code>
                    </Link>
                  </td>
                  <td class="mono hide-narrow">{shortId(j.jobId)}</td>
                  {isAdmin && (
                    <td class="hide-narrow">
                      <span class="ellipsis" title={owners[j.owner] ?? j.owner}>
                        {owners[j.owner] ?? shortId(j.owner)}
                      </span>
                    </td>
                  )}
                  <td class="mono hide-narrow">
                    <span class="ellipsis" title={j.workerId ?? ''}>
                      {j.workerId ?? '—'}
                    </span>
                  </td>
                  <td class="mono hide-narrow">{j.exitCode ?? '—'}</td>
                  <td class="hide-narrow">{formatDuration(jobDurationMs(j.startedAt, j.completedAt, now))}</td>
                  <td class="col-created">
                    <time dateTime={j.createdAt} title={formatTime(j.createdAt)}>
                      {formatRelative(j.createdAt, now)}
                    </time>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div class="pager">
        <button type="button" class="btn" onClick={newer} disabled={state.cursor === null || loading}>
          ← Newer
        </button>
        <span class="muted">
          {loading ? 'Loading…' : `Page ${state.previous.length + 1} · ${state.jobs.length} shown`}
        </span>
        <button type="button" class="btn" onClick={older} disabled={state.nextCursor === null || loading}>
          Older →
        </button>
      </div>
    </>
  );
}
