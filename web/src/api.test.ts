import { describe, expect, it } from 'vitest';
import { errorFrom, outputUrl } from './api';

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
