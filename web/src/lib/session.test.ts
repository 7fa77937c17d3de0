import { describe, expect, it } from 'vitest';
import { ApiError, errorFrom } from '../api';
import { BACKOFF_MS, resolveSession } from './session';

function scripted(answers: Array<ApiError | Error | string>) {
  let i = 0;
  return () => {
    const a = answers[i++];
    if (a === undefined) throw new Error('asked too often');
    return typeof a === 'string' ? Promise.resolve(a) : Promise.reject(a);
  };
}

describe('resolveSession', () => {
  it('keeps the session through a 429 and waits as long as Retry-After says', async () => {
    const waits: number[] = [];
    const me = scripted([errorFrom(429, '{"error":"rate limited","code":"rate_limited"}', '3'), 'alice']);
    const user = await resolveSession(me, async (ms) => void waits.push(ms));
    expect(user).toBe('alice');
    expect(waits).toEqual([3000]);
  });

  it('keeps the session through 5xx and network errors, backing off', async () => {
    const waits: number[] = [];
    const me = scripted([
      errorFrom(503, ''),
      new ApiError(0, 'network', 'Cannot reach the hub'),
      new TypeError('fetch failed'),
      'bob',
    ]);
    expect(await resolveSession(me, async (ms) => void waits.push(ms))).toBe('bob');
    expect(waits).toEqual(BACKOFF_MS.slice(0, 3));
  });

  it('signs out on 401 only', async () => {
    const me = scripted([errorFrom(429, '', null), errorFrom(401, '{"error":"no","code":"unauthorized"}')]);
    expect(await resolveSession(me, async () => {})).toBeNull();
  });
});
