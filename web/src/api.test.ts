import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, api, errorFrom, outputUrl } from './api';

describe('errorFrom', () => {
  it('uses the hub error body, capitalised', () => {
    const e = errorFrom(401, '{"error":"invalid email or password","code":"unauthorized"}');
    expect(e.status).toBe(401);
    expect(e.code).toBe('unauthorized');
    expect(e.message).toBe('Invalid email or password');
  });

  it('falls back to a message per status for non-JSON bodies', () => {
    expect(errorFrom(413, '<html>too big</html>').message).toBe('Too large for the hub');
    expect(errorFrom(502, '').message).toBe('Request failed (HTTP 502)');
    expect(errorFrom(502, '').code).toBe('http_502');
  });

  it('mentions Retry-After on 429', () => {
    expect(errorFrom(429, '{"error":"rate limited","code":"rate_limited"}', '7').message).toBe(
      'Rate limited (retry in 7 s)',
    );
  });
});

describe('outputUrl', () => {
  it('is the raw log route, with an offset only when needed', () => {
    expect(outputUrl('a/b')).toBe('/api/jobs/a%2Fb/output');
    expect(outputUrl('j1', 42)).toBe('/api/jobs/j1/output?offset=42');
  });
});

describe('resizeJob', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('posts the job and its new size as JSON and returns the size the hub stored', async () => {
    const calls: { path: string; init: RequestInit }[] = [];
    vi.stubGlobal('fetch', async (path: string, init: RequestInit) => {
      calls.push({ path, init });
      return new Response('{"success":true,"jobId":"j1","ttySize":{"cols":100,"rows":30}}', { status: 200 });
    });
    const r = await api.resizeJob('j1', 100, 30);
    expect(r.ttySize).toEqual({ cols: 100, rows: 30 });
    expect(calls).toHaveLength(1);
    expect(calls[0]!.path).toBe('/api/jobs/resize');
    expect(calls[0]!.init.method).toBe('POST');
    expect(JSON.parse(calls[0]!.init.body as string)).toEqual({ jobId: 'j1', cols: 100, rows: 30 });
  });

  it('rejects with the hub code when the job is not running', async () => {
    vi.stubGlobal(
      'fetch',
      async () =>
        new Response('{"error":"job j1 is not running (it is completed)","code":"not_running"}', { status: 409 }),
    );
    const e = await api.resizeJob('j1', 100, 30).catch((e: unknown) => e);
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(409);
    expect((e as ApiError).code).toBe('not_running');
  });
});
