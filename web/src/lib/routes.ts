// History-based routes. Every page has a stable URL; the hub answers unknown non-API paths
// with index.html, so a reload or a shared link lands on the same page.

export type Route =
  | { page: 'jobs' }
  | { page: 'newJob' }
  | { page: 'job'; jobId: string }
  | { page: 'workers' }
  | { page: 'admin' }
  | { page: 'login' }
  | { page: 'notFound' };

export function parseRoute(pathname: string): Route {
  const path = pathname.replace(/\/+$/, '') || '/';
  if (path === '/' || path === '/jobs') return { page: 'jobs' };
  if (path === '/jobs/new') return { page: 'newJob' };
  const m = /^\/jobs\/([^/]+)$/.exec(path);
  if (m) return { page: 'job', jobId: decodeURIComponent(m[1]!) };
  if (path === '/workers') return { page: 'workers' };
  if (path === '/admin') return { page: 'admin' };
  if (path === '/login') return { page: 'login' };
  return { page: 'notFound' };
}

export const jobPath = (jobId: string): string => `/jobs/${encodeURIComponent(jobId)}`;

/** Where to go after signing in: a same-origin path from `?next=`, else the jobs list. */
export function nextPath(search: string): string {
  const next = new URLSearchParams(search).get('next');
  if (next && next.startsWith('/') && !next.startsWith('//') && !next.startsWith('/login')) {
    return next;
  }
  return '/jobs';
}
