import { describe, expect, it } from 'vitest';
import { jobPath, nextPath, parseRoute } from './routes';

describe('routes', () => {
  it('parses every page', () => {
    expect(parseRoute('/')).toEqual({ page: 'jobs' });
    expect(parseRoute('/jobs/')).toEqual({ page: 'jobs' });
    expect(parseRoute('/jobs/new')).toEqual({ page: 'newJob' });
    expect(parseRoute('/jobs/abc-123')).toEqual({ page: 'job', jobId: 'abc-123' });
    expect(parseRoute('/workers')).toEqual({ page: 'workers' });
    expect(parseRoute('/admin')).toEqual({ page: 'admin' });
    expect(parseRoute('/login')).toEqual({ page: 'login' });
    expect(parseRoute('/nope')).toEqual({ page: 'notFound' });
  });

  it('round-trips job ids through the URL', () => {
    expect(parseRoute(jobPath('a b/c'))).toEqual({ page: 'job', jobId: 'a b/c' });
  });

  it('only follows same-origin paths after sign in', () => {
    expect(nextPath('?next=%2Fjobs%2Fx')).toBe('/jobs/x');
    expect(nextPath('?next=https://evil.example')).toBe('/jobs');
    expect(nextPath('?next=//evil.example')).toBe('/jobs');
    expect(nextPath('')).toBe('/jobs');
  });
});
