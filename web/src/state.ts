// App-wide state: the signed-in user and the current location.

import { signal } from '@preact/signals';
import { api, ApiError, setUnauthorizedHandler } from './api';
import type { UserView } from './types';
import { resolveSession } from './lib/session';
import { hubSocket } from './ws';

/** `undefined` while the first `GET /api/auth/me` runs, `null` when signed out. */
export const currentUser = signal<UserView | null | undefined>(undefined);

/** The path and query currently shown. */
export const location$ = signal({ pathname: window.location.pathname, search: window.location.search });

export function navigate(to: string, opts: { replace?: boolean } = {}): void {
  const url = new URL(to, window.location.origin);
  if (opts.replace) history.replaceState(null, '', url.pathname + url.search);
  else history.pushState(null, '', url.pathname + url.search);
  location$.value = { pathname: url.pathname, search: url.search };
  window.scrollTo(0, 0);
}

window.addEventListener('popstate', () => {
  location$.value = { pathname: window.location.pathname, search: window.location.search };
});

// The session cookie is HttpOnly, so the page cannot see it. A marker in localStorage says
// whether asking `GET /api/auth/me` is worth it: a first visit shows the sign-in form without
// a 401 in the console.
const MARKER = 'cmdx.signedIn';
function setMarker(on: boolean): void {
  try {
    if (on) localStorage.setItem(MARKER, '1');
    else localStorage.removeItem(MARKER);
  } catch {
    // storage disabled: always ask the hub
  }
}
function hasMarker(): boolean {
  try {
    return localStorage.getItem(MARKER) === '1';
  } catch {
    return true;
  }
}

export function signedIn(user: UserView): void {
  setMarker(true);
  currentUser.value = user;
  hubSocket.start();
}

export function signedOut(): void {
  setMarker(false);
  hubSocket.stop();
  currentUser.value = null;
}

setUnauthorizedHandler(() => {
  if (currentUser.value) signedOut();
});

// A socket that keeps failing may mean the session expired: ask the hub, sign out on 401.
hubSocket.onRepeatedFailure = () => {
  api.me().then(
    () => {},
    (err: unknown) => {
      if (err instanceof ApiError && err.status === 401 && currentUser.value) {
        signedOut();
        navigate(`/login?next=${encodeURIComponent(window.location.pathname)}`, { replace: true });
      }
    },
  );
};

export async function loadSession(): Promise<void> {
  if (!hasMarker()) {
    currentUser.value = null;
    return;
  }
  // Only a 401 signs out: a 429, a 5xx or a lost connection is asked again (lib/session.ts).
  const user = await resolveSession(
    () => api.me(),
    (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  );
  if (user) signedIn(user);
  else signedOut();
}

export async function signOut(): Promise<void> {
  try {
    await api.logout();
  } catch {
    // the cookie may already be gone; sign out locally anyway
  }
  signedOut();
  navigate('/login', { replace: true });
}
