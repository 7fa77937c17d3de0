// REST client for the hub. Same origin; the HttpOnly `auth_token` cookie authenticates.

import type {
  DeleteUserResponse,
  ErrorBody,
  FileView,
  JobList,
  JobView,
  LoginResponse,
  MintTokenResponse,
  ResizeResponse,
  RevokeTokenResponse,
  SubmitRequest,
  SubmitResponse,
  UpdateUserRequest,
  UserView,
  WorkerTokenView,
  WorkerView,
} from './types';

/** A failed request, with the hub's `{error, code}` when it sent one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** The hub's Retry-After, in seconds, when it sent one (429, 503). */
    readonly retryAfterSecs?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Called when the session is gone (a 401 on a request that needs one). */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

const FALLBACK_MESSAGES: Record<number, string> = {
  400: 'The request was not accepted',
  401: 'You are signed out',
  403: 'You are not allowed to do that',
  404: 'Not found',
  409: 'Conflict',
  413: 'Too large for the hub',
  429: 'Too many requests; try again shortly',
};

/** Turns a non-2xx status and body text into an ApiError. */
export function errorFrom(status: number, bodyText: string, retryAfter?: string | null): ApiError {
  let code = `http_${status}`;
  let message = FALLBACK_MESSAGES[status] ?? `Request failed (HTTP ${status})`;
  try {
    const body = JSON.parse(bodyText) as Partial<ErrorBody>;
    if (body && typeof body.error === 'string' && body.error) message = body.error;
    if (body && typeof body.code === 'string' && body.code) code = body.code;
  } catch {
    // not JSON: keep the fallback
  }
  if (status === 429 && retryAfter) message = `${message} (retry in ${retryAfter} s)`;
  const secs = retryAfter ? Number(retryAfter) : NaN;
  return new ApiError(status, code, capitalize(message), Number.isFinite(secs) && secs >= 0 ? secs : undefined);
}

function capitalize(s: string): string {
  return s.length > 0 ? s[0]!.toUpperCase() + s.slice(1) : s;
}

interface RequestOptions {
  method?: string;
  body?: unknown;
  /** Do not treat a 401 as "signed out" (login itself, the initial `me`). */
  quiet401?: boolean;
}

export async function request<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const init: RequestInit = {
    method: opts.method ?? (opts.body === undefined ? 'GET' : 'POST'),
    credentials: 'same-origin',
    headers: { Accept: 'application/json' },
  };
  if (opts.body !== undefined) {
    init.body = JSON.stringify(opts.body);
    (init.headers as Record<string, string>)['Content-Type'] = 'application/json';
  }
  let res: Response;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the hub');
  }
  const text = await res.text();
  if (!res.ok) {
    if (res.status === 401 && !opts.quiet401) onUnauthorized();
    throw errorFrom(res.status, text, res.headers.get('Retry-After'));
  }
  if (!text) return undefined as T;
  return JSON.parse(text) as T;
}

export const api = {
  login: (email: string, password: string) =>
    request<LoginResponse>('/api/auth/login', { body: { email, password }, quiet401: true }),
  logout: () => request<unknown>('/api/auth/logout', { method: 'POST', quiet401: true }),
  me: () => request<UserView>('/api/auth/me', { quiet401: true }),
  register: (email: string, password: string, role: string) =>
    request<UserView>('/api/auth/register', { body: { email, password, role } }),
  users: () => request<{ users: UserView[] }>('/api/users/list'),
  updateUser: (id: string, change: UpdateUserRequest) =>
    request<UserView>(`/api/users/${encodeURIComponent(id)}`, { method: 'PATCH', body: change }),
  deleteUser: (id: string, jobs: 'keep' | 'remove') =>
    request<DeleteUserResponse>(`/api/users/${encodeURIComponent(id)}?jobs=${jobs}`, { method: 'DELETE' }),
  setQuota: (id: string, maxQueued: number | null, maxRunning: number | null) =>
    request<UserView>(`/api/users/${encodeURIComponent(id)}/quota`, {
      method: 'PUT',
      body: { maxQueued, maxRunning },
    }),
  submit: (req: SubmitRequest) => request<SubmitResponse>('/api/jobs/submit', { body: req }),
  /** The same job again (command, file, tags, env values, timeout, terminal): only the hub
   * knows the env values, so it builds the new job itself. */
  rerun: (jobId: string) =>
    request<SubmitResponse>(`/api/jobs/${encodeURIComponent(jobId)}/rerun`, { body: {} }),
  job: (jobId: string) => request<JobView>(`/api/jobs/status?jobId=${encodeURIComponent(jobId)}`),
  jobs: (query: string) => request<JobList>(`/api/jobs/list?${query}`),
  cancel: (jobId: string) => request<unknown>('/api/jobs/cancel', { body: { jobId } }),
  /** New size for a running job's terminal (409 `not_running` / `no_terminal` otherwise). */
  resizeJob: (jobId: string, cols: number, rows: number) =>
    request<ResizeResponse>('/api/jobs/resize', { body: { jobId, cols, rows } }),
  workers: () => request<{ workers: WorkerView[] }>('/api/workers/list'),
  /** The worker takes no new jobs until its agent reconnects (admin). */
  drainWorker: (workerId: string) =>
    request<unknown>(`/api/workers/${encodeURIComponent(workerId)}/drain`, { method: 'POST' }),
  /** A drained worker takes jobs again (admin). */
  resumeWorker: (workerId: string) =>
    request<unknown>(`/api/workers/${encodeURIComponent(workerId)}/resume`, { method: 'POST' }),
  /** Forgets a worker (admin): its jobs are requeued, its id is free to enrol again. */
  removeWorker: (workerId: string) =>
    request<unknown>(`/api/workers/${encodeURIComponent(workerId)}`, { method: 'DELETE' }),
  mintToken: (name: string | undefined, ttlSecs: number | undefined, tags: string[] | undefined) =>
    request<MintTokenResponse>('/api/workers/tokens', { body: { name, ttlSecs, tags } }),
  tokens: () => request<{ tokens: WorkerTokenView[] }>('/api/workers/tokens'),
  revokeToken: (tokenId: string) =>
    request<RevokeTokenResponse>(`/api/workers/tokens/${encodeURIComponent(tokenId)}`, { method: 'DELETE' }),
};

/** URL of a job's raw combined log from `offset` (also the "Download log" link). */
export const outputUrl = (jobId: string, offset = 0): string =>
  `/api/jobs/${encodeURIComponent(jobId)}/output${offset > 0 ? `?offset=${offset}` : ''}`;

/** One matching line of a search over the whole stored log. */
export interface OutputMatch {
  line: number;
  offset: number;
  text: string;
  textTruncated: boolean;
}

/** One page of `GET /api/jobs/{id}/output/search`. */
export interface OutputSearch {
  matches: OutputMatch[];
  linesScanned: number;
  bytesScanned: number;
  startOffset: number;
  line: number;
  offset: number;
  next?: string | null;
}

/** Searches the job's whole stored log (a page: the hub bounds the work per request). */
export const searchOutput = (jobId: string, q: string, caseSensitive: boolean, cursor?: string | null): Promise<OutputSearch> => {
  const params = new URLSearchParams({ q, limit: '200' });
  if (caseSensitive) params.set('case', 'sensitive');
  if (cursor) params.set('cursor', cursor);
  return request<OutputSearch>(`/api/jobs/${encodeURIComponent(jobId)}/output/search?${params}`);
};

/** Bytes of the stored log and the offset they start at. */
export interface OutputSlice {
  offset: number;
  bytes: Uint8Array;
}

/**
 * Fetches raw log bytes from `offset` (to fill a hole in the live stream). The hub's
 * `x-output-offset` header says where they start: later than asked when the output cap dropped
 * the head of the log.
 */
export async function fetchOutput(jobId: string, offset: number, limit?: number): Promise<OutputSlice> {
  const url = outputUrl(jobId, offset);
  const ranged = limit === undefined ? url : `${url}${url.includes('?') ? '&' : '?'}limit=${limit}`;
  const res = await fetch(ranged, { credentials: 'same-origin' });
  if (!res.ok) throw errorFrom(res.status, await res.text());
  const start = Number(res.headers.get('x-output-offset') ?? offset);
  return {
    offset: Number.isFinite(start) ? start : offset,
    bytes: new Uint8Array(await res.arrayBuffer()),
  };
}

function formatSize(n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`;
}

export interface UploadHandle {
  promise: Promise<FileView>;
  abort: () => void;
}

/**
 * Uploads a ZIP as multipart field `file` with XMLHttpRequest, whose upload events give a
 * progress bar (fetch has none).
 */
export function uploadFile(file: File, onProgress: (loaded: number, total: number) => void): UploadHandle {
  const xhr = new XMLHttpRequest();
  const promise = new Promise<FileView>((resolve, reject) => {
    xhr.open('POST', '/api/files/upload');
    xhr.withCredentials = true;
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText) as FileView);
        } catch {
          reject(new ApiError(xhr.status, 'bad_response', 'The hub sent an unreadable answer'));
        }
        return;
      }
      if (xhr.status === 401) onUnauthorized();
      const err = errorFrom(xhr.status, xhr.responseText, xhr.getResponseHeader('Retry-After'));
      if (xhr.status === 413) {
        reject(new ApiError(413, err.code, `Upload too large: ${formatSize(file.size)} is over the hub's limit`));
      } else reject(err);
    };
    let sent = 0;
    xhr.upload.addEventListener('progress', (e) => (sent = e.loaded));
    xhr.onerror = () =>
      reject(
        new ApiError(
          0,
          'network',
          sent > 0 && sent < file.size
            ? 'Upload failed: the hub closed the connection (the file may be larger than it accepts)'
            : 'Upload failed: cannot reach the hub',
        ),
      );
    xhr.onabort = () => reject(new ApiError(0, 'aborted', 'Upload cancelled'));
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}
