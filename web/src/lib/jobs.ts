// The jobs table's state: one page from `GET /api/jobs/list`, kept current by live `job`
// events from the WebSocket. Pure functions, so the merge rules are unit-tested.

import { JOB_STATUSES, type JobList, type JobStatus, type JobSummary } from '../types';

export interface JobsFilter {
  /** Only this status, or every status when empty. */
  status: JobStatus | '';
  /** Command substring (case-insensitive), as the hub's `q`. */
  q: string;
}

export interface JobsState {
  filter: JobsFilter;
  jobs: JobSummary[];
  /** Cursor that loaded this page (`null` for the first, newest page). */
  cursor: string | null;
  /** Cursors of the pages before this one, for "Newer". */
  previous: (string | null)[];
  /** Cursor of the next (older) page, if any. */
  nextCursor: string | null;
  /** Live events seen for matching jobs while not on the first page. */
  newerHidden: number;
  /** Page size: live inserts push the oldest rows off the first page. */
  limit: number;
}

export type JobsAction =
  | { type: 'filter'; filter: JobsFilter }
  | { type: 'loaded'; list: JobList; cursor: string | null; previous: (string | null)[]; limit?: number }
  | { type: 'live'; job: JobSummary };

export const initialJobsState = (filter: JobsFilter = { status: '', q: '' }): JobsState => ({
  filter,
  jobs: [],
  cursor: null,
  previous: [],
  nextCursor: null,
  newerHidden: 0,
  limit: 50,
});

/** Whether a job belongs in a view with this filter. */
export function matchesFilter(job: JobSummary, filter: JobsFilter): boolean {
  if (filter.status && job.status !== filter.status) return false;
  const q = filter.q.trim().toLowerCase();
  if (q && !job.command.toLowerCase().includes(q)) return false;
  return true;
}

const STATUS_RANK: Record<JobStatus, number> = {
  queued: 0,
  assigned: 1,
  running: 2,
  completed: 3,
  failed: 3,
  cancelled: 3,
};

export const isTerminal = (s: JobStatus): boolean => STATUS_RANK[s] === 3;

/**
 * Whether `next` is at least as new as `prev`. Events can arrive after a list fetch that already
 * saw a later state: a terminal job never goes back, and within one attempt the status only
 * moves forward (a requeue bumps the attempt).
 */
export function isNewer(prev: JobSummary, next: JobSummary): boolean {
  if (isTerminal(prev.status)) return isTerminal(next.status);
  if (next.attempt !== prev.attempt) return next.attempt > prev.attempt || isTerminal(next.status);
  return STATUS_RANK[next.status] >= STATUS_RANK[prev.status];
}

/** Newest first: by creation time, then by id (ids are time-ordered on the hub). */
export function compareJobs(a: JobSummary, b: JobSummary): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? 1 : -1;
  if (a.jobId === b.jobId) return 0;
  return a.jobId < b.jobId ? 1 : -1;
}

/** Merges one live event into the visible page. */
export function applyLive(state: JobsState, job: JobSummary): JobsState {
  const idx = state.jobs.findIndex((j) => j.jobId === job.jobId);
  if (idx >= 0) {
    const prev = state.jobs[idx]!;
    if (!isNewer(prev, job)) return state;
    const jobs = state.jobs.slice();
    if (matchesFilter(job, state.filter)) jobs[idx] = job;
    else jobs.splice(idx, 1);
    return { ...state, jobs };
  }
  if (!matchesFilter(job, state.filter)) return state;
  if (state.cursor !== null) {
    // An older page: new jobs belong on page one; count them so the UI can say so.
    return { ...state, newerHidden: state.newerHidden + 1 };
  }
  const last = state.jobs[state.jobs.length - 1];
  if (last && state.nextCursor !== null && compareJobs(job, last) > 0) {
    // Older than everything on this page while more pages exist: it lives on a later page.
    return state;
  }
  const jobs = state.jobs.slice();
  let i = 0;
  while (i < jobs.length && compareJobs(jobs[i]!, job) < 0) i++;
  jobs.splice(i, 0, job);
  let nextCursor = state.nextCursor;
  if (jobs.length > state.limit) {
    // Keep one page: the rows pushed off are reached with "Older" (the hub's cursor is the id
    // of the last job shown).
    jobs.length = state.limit;
    nextCursor = jobs[jobs.length - 1]!.jobId;
  }
  return { ...state, jobs, nextCursor };
}

export function jobsReducer(state: JobsState, action: JobsAction): JobsState {
  switch (action.type) {
    case 'filter':
      return initialJobsState(action.filter);
    case 'loaded':
      return {
        ...state,
        jobs: action.list.jobs.slice().sort(compareJobs),
        cursor: action.cursor,
        previous: action.previous,
        nextCursor: action.list.nextCursor ?? null,
        newerHidden: 0,
        limit: action.limit ?? state.limit,
      };
    case 'live':
      return applyLive(state, action.job);
  }
}

/** The jobs page's filter from its URL query (`?status=failed&q=make`); unknown statuses are
 * ignored, so a hand-edited link still shows a page. */
export function filterFromSearch(search: string): JobsFilter {
  const p = new URLSearchParams(search);
  const status = p.get('status') ?? '';
  return {
    status: (JOB_STATUSES as readonly string[]).includes(status) ? (status as JobStatus) : '',
    q: p.get('q') ?? '',
  };
}

/** The jobs page's URL query for `filter` (`''` when unfiltered), the inverse of
 * [`filterFromSearch`]. */
export function searchOfFilter(filter: JobsFilter): string {
  const p = new URLSearchParams();
  if (filter.status) p.set('status', filter.status);
  if (filter.q) p.set('q', filter.q);
  const s = p.toString();
  return s ? `?${s}` : '';
}

/** Builds the `GET /api/jobs/list` query string. */
export function listQuery(filter: JobsFilter, cursor: string | null, limit: number): string {
  const p = new URLSearchParams();
  if (filter.status) p.set('status', filter.status);
  const q = filter.q.trim();
  if (q) p.set('q', q);
  p.set('limit', String(limit));
  if (cursor) p.set('cursor', cursor);
  return p.toString();
}
