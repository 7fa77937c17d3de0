import { describe, expect, it } from 'vitest';
import type { JobSummary } from '../types';
import {
  applyLive,
  filterFromSearch,
  searchOfFilter,
  initialJobsState,
  isNewer,
  jobsReducer,
  listQuery,
  matchesFilter,
  type JobsState,
} from './jobs';

let n = 0;
function job(over: Partial<JobSummary> = {}): JobSummary {
  n++;
  return {
    jobId: `job-${String(n).padStart(4, '0')}`,
    command: 'echo hi',
    status: 'queued',
    workerId: null,
    attempt: 0,
    owner: 'u1',
    tags: [],
    createdAt: `2026-01-01T00:00:${String(n % 60).padStart(2, '0')}Z`,
    startedAt: null,
    completedAt: null,
    exitCode: null,
    failure: null,
    outputBytes: 0,
    priority: 0,
    ...over,
  };
}

function loaded(jobs: JobSummary[], over: Partial<JobsState> = {}): JobsState {
  const s = jobsReducer(initialJobsState(), {
    type: 'loaded',
    list: { jobs, count: jobs.length, nextCursor: null },
    cursor: null,
    previous: [],
  });
  return { ...s, ...over };
}

describe('jobs reducer', () => {
  it('sorts a loaded page newest first', () => {
    const a = job({ createdAt: '2026-01-01T00:00:01Z' });
    const b = job({ createdAt: '2026-01-01T00:00:02Z' });
    expect(loaded([a, b]).jobs.map((j) => j.jobId)).toEqual([b.jobId, a.jobId]);
  });

  it('updates a listed job in place on a live event', () => {
    const a = job();
    const s = applyLive(loaded([a]), { ...a, status: 'running', attempt: 1, workerId: 'w1' });
    expect(s.jobs).toHaveLength(1);
    expect(s.jobs[0]!.status).toBe('running');
    expect(s.jobs[0]!.workerId).toBe('w1');
  });

  it('inserts a new job at the top of the first page', () => {
    const a = job({ createdAt: '2026-01-01T00:00:01Z' });
    const b = job({ createdAt: '2026-01-01T00:00:09Z' });
    const s = applyLive(loaded([a]), b);
    expect(s.jobs.map((j) => j.jobId)).toEqual([b.jobId, a.jobId]);
  });

  it('does not insert a new job into an older page but counts it', () => {
    const a = job();
    const s = applyLive(loaded([a], { cursor: 'c1' }), job());
    expect(s.jobs).toHaveLength(1);
    expect(s.newerHidden).toBe(1);
  });

  it('ignores a stale event after a later state was loaded', () => {
    const a = job({ status: 'completed', attempt: 1, exitCode: 0 });
    const s0 = loaded([a]);
    const s = applyLive(s0, { ...a, status: 'running', exitCode: null });
    expect(s).toBe(s0);
  });

  it('accepts a requeue with a higher attempt', () => {
    const a = job({ status: 'running', attempt: 1 });
    const s = applyLive(loaded([a]), { ...a, status: 'queued', attempt: 2 });
    expect(s.jobs[0]!.status).toBe('queued');
    expect(s.jobs[0]!.attempt).toBe(2);
  });

  it('drops a job that leaves the status filter and ignores non-matching new jobs', () => {
    const a = job({ status: 'running', attempt: 1 });
    let s = loaded([a], { filter: { status: 'running', q: '' } });
    s = applyLive(s, job({ status: 'queued' }));
    expect(s.jobs).toHaveLength(1);
    s = applyLive(s, { ...a, status: 'completed' });
    expect(s.jobs).toHaveLength(0);
  });

  it('filters live events by command text, case-insensitively', () => {
    let s = loaded([], { filter: { status: '', q: 'MAKE' } });
    s = applyLive(s, job({ command: 'echo hi' }));
    s = applyLive(s, job({ command: 'make test' }));
    expect(s.jobs.map((j) => j.command)).toEqual(['make test']);
  });

  it('does not insert a job older than a full page', () => {
    const a = job({ createdAt: '2026-01-01T00:00:30Z' });
    const s0 = loaded([a], { nextCursor: 'next' });
    const s = applyLive(s0, job({ createdAt: '2026-01-01T00:00:01Z' }));
    expect(s.jobs).toHaveLength(1);
  });

  it('keeps one page when live jobs push rows off the end', () => {
    const a = job({ createdAt: '2026-01-01T00:00:01Z' });
    const b = job({ createdAt: '2026-01-01T00:00:02Z' });
    let s = loaded([a, b], { limit: 2 });
    const c = job({ createdAt: '2026-01-01T00:00:03Z' });
    s = applyLive(s, c);
    expect(s.jobs.map((j) => j.jobId)).toEqual([c.jobId, b.jobId]);
    expect(s.nextCursor).toBe(b.jobId);
  });

  it('resets the page when the filter changes', () => {
    const s = jobsReducer(loaded([job()], { nextCursor: 'x' }), {
      type: 'filter',
      filter: { status: 'failed', q: '' },
    });
    expect(s.jobs).toEqual([]);
    expect(s.nextCursor).toBeNull();
    expect(s.filter.status).toBe('failed');
  });
});

describe('helpers', () => {
  it('matchesFilter combines status and text', () => {
    const a = job({ command: 'cargo build', status: 'failed' });
    expect(matchesFilter(a, { status: '', q: '' })).toBe(true);
    expect(matchesFilter(a, { status: 'failed', q: 'build' })).toBe(true);
    expect(matchesFilter(a, { status: 'running', q: 'build' })).toBe(false);
    expect(matchesFilter(a, { status: '', q: 'npm' })).toBe(false);
  });

  it('isNewer never moves a terminal job back', () => {
    const done = job({ status: 'cancelled', attempt: 1 });
    expect(isNewer(done, { ...done, status: 'running' })).toBe(false);
    expect(isNewer(job({ status: 'assigned', attempt: 1 }), job({ status: 'running', attempt: 1 }))).toBe(true);
  });

  it('listQuery encodes only the set fields', () => {
    expect(listQuery({ status: '', q: '' }, null, 50)).toBe('limit=50');
    expect(listQuery({ status: 'running', q: ' a&b ' }, 'c 1', 20)).toBe(
      'status=running&q=a%26b&limit=20&cursor=c+1',
    );
  });
});

describe('the filter in the URL', () => {
  it('round-trips and ignores what it does not know', () => {
    expect(filterFromSearch('?status=failed&q=make%20test')).toEqual({ status: 'failed', q: 'make test' });
    expect(searchOfFilter({ status: 'failed', q: 'make test' })).toBe('?status=failed&q=make+test');
    expect(filterFromSearch(searchOfFilter({ status: 'running', q: 'a&b=c' }))).toEqual({ status: 'running', q: 'a&b=c' });
    expect(filterFromSearch('?status=bogus')).toEqual({ status: '', q: '' });
    expect(searchOfFilter({ status: '', q: '' })).toBe('');
  });
});
