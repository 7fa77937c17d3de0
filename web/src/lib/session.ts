// Whether the browser still has a session: only the hub's 401 means "signed out". A 429 (the
// read budget is per user and per address: other tabs, or anyone behind the same address
// before sign-in, can spend it), a 5xx or a network error says nothing about the session, so
// the question is asked again, after Retry-After when the hub sent one.

import { ApiError } from '../api';

/** Delays between attempts when the hub gave no Retry-After, in ms (the last one repeats). */
export const BACKOFF_MS = [500, 1000, 2000, 5000, 10000];

/**
 * Asks `me` until it answers: the user, or `null` on 401. Never gives up on other errors;
 * `onRetry` reports each wait (for a "reconnecting" notice).
 */
export async function resolveSession<U>(
  me: () => Promise<U>,
  sleep: (ms: number) => Promise<void>,
  onRetry: (err: unknown, waitMs: number) => void = () => {},
): Promise<U | null> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await me();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return null;
      const fallback = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)]!;
      const hinted = err instanceof ApiError ? err.retryAfterSecs : undefined;
      const wait = hinted !== undefined ? Math.max(hinted * 1000, 250) : fallback;
      onRetry(err, wait);
      await sleep(wait);
    }
  }
}
