// Wire types of the hub's REST and /ws/client APIs, mirroring proto/src/{rest,client,job}.rs.
// All JSON is camelCase; timestamps are RFC 3339 UTC strings.

export type JobStatus = 'queued' | 'assigned' | 'running' | 'completed' | 'failed' | 'cancelled';

export const JOB_STATUSES: readonly JobStatus[] = [
  'queued',
  'assigned',
  'running',
  'completed',
  'failed',
  'cancelled',
];

export type FailureKind =
  | 'exit_code'
  | 'timeout'
  | 'oom'
  | 'killed'
  | 'setup'
  | 'sandbox'
  | 'worker_lost'
  | 'image';

export type StreamKind = 'stdout' | 'stderr';

export interface ErrorBody {
  error: string;
  code: string;
}

export interface UserView {
  id: string;
  email: string;
  role: 'admin' | 'user' | string;
  createdAt: string;
  /** The user's own limit on queued jobs (0: none); absent: the hub's. */
  maxQueued?: number;
  /** The user's own limit on running jobs (0: none); absent: the hub's. */
  maxRunning?: number;
  /** Disabled by an admin: cannot sign in. */
  disabled?: boolean;
}

/** `PATCH /api/users/{id}`: absent fields stay. */
export interface UpdateUserRequest {
  disabled?: boolean;
  role?: string;
  password?: string;
}

/** `DELETE /api/users/{id}?jobs=keep|remove`. */
export interface DeleteUserResponse {
  userId: string;
  jobs: 'kept' | 'removed';
  jobsRemoved: number;
  filesRemoved: number;
}

export interface LoginResponse {
  token: string;
  user: UserView;
}

export interface FileView {
  fileId: string;
  fileUrl: string;
  filename: string;
  size: number;
  sha256: string;
  createdAt?: string;
}

export interface SubmitRequest {
  command: string;
  fileId?: string;
  fileUrl?: string;
  timeout?: number;
  tags?: string[];
  env?: Record<string, string>;
  maxAttempts?: number;
  /** Globs of result files to keep, relative to the job dir (`dist/**`, `reports/*.xml`). */
  artifacts?: string[];
  /** Higher runs first, -100 to 100 (default 0; above the hub's ceiling, 50, admins only). */
  priority?: number;
  /** OCI image to run in (`alpine:3.20`, `registry/repo:tag`, `…@sha256:…`); absent: the host's root. */
  image?: string;
  /** Run in a pseudo-terminal (default true); false: stdout and stderr on pipes. */
  tty?: boolean;
}

export interface SubmitResponse {
  jobId: string;
}

export interface JobResult {
  success: boolean;
  duration: number;
  lines: number;
}

export interface AttemptView {
  attempt: number;
  workerId: string;
  assignedAt: string;
  endedAt?: string;
  end?: string;
}

export interface JobView {
  jobId: string;
  command: string;
  fileUrl: string | null;
  status: JobStatus;
  workerId: string | null;
  attempt: number;
  maxAttempts: number;
  owner: string;
  tags: string[];
  envKeys: string[];
  createdAt: string;
  startedAt: string | null;
  completedAt: string | null;
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: number | null;
  timeout: number;
  error: string | null;
  failure: FailureKind | null;
  result: JobResult | null;
  cancelRequested: boolean;
  outputBytes: number;
  outputTruncated: boolean;
  peakMemoryBytes: number | null;
  cpuMs: number | null;
  /** The image the job runs in (normalised); null: the worker host's root. Older hubs omit it. */
  image?: string | null;
  /** The manifest digest the agent ran. */
  imageDigest?: string | null;
  /** Time the agent spent pulling the image for this attempt, ms (0: cached). */
  pullMs?: number | null;
  attempts: AttemptView[];
  /** Artifact globs asked for at submission. */
  artifactPatterns: string[];
  /** Collected files of the current attempt (empty until uploaded, which is before the end). */
  artifacts: ArtifactView[];
  /** `/api/jobs/{id}/artifacts` (all files as one ZIP) once there are any. */
  artifactsUrl: string | null;
  /** Matching paths not collected, with why (at most 100 listed). */
  artifactsSkipped: ArtifactSkip[];
  /** All skipped paths, counted (may exceed the list). */
  artifactsSkippedTotal: number;
  /** Why no artifacts could be collected or stored, if so. */
  artifactsError: string | null;
  /** While queued: 1 + the older queued jobs its able workers could take first; else null. */
  queuePosition: number | null;
  /** While queued: no connected worker can run it (its tags are served by nobody). */
  noMatchingWorker: boolean;
  /** While queued: why it waits. */
  waitReason?: WaitReason;
  /** Higher runs first (-100 to 100). */
  priority: number;
  /** The job's terminal size now (as submitted, or the last resize); null: the job runs on pipes. */
  ttySize: WindowSize | null;
}

/** A terminal's size in character cells. */
export interface WindowSize {
  cols: number;
  rows: number;
}

/** `POST /api/jobs/resize` answer. */
export interface ResizeResponse {
  success: true;
  jobId: string;
  ttySize: WindowSize;
}

/** Why a queued job has not started. */
export type WaitReason = 'no_matching_worker' | 'user_at_running_quota' | 'behind_higher_priority' | 'no_free_slot';

/** One collected artifact file. */
export interface ArtifactView {
  /** Relative to the job dir, `/`-separated. */
  path: string;
  size: number;
  /** Hex sha256 of the content. */
  sha256: string;
}

/** A path that matched an artifact glob but was not collected. */
export interface ArtifactSkip {
  path: string;
  reason: string;
}

export interface JobSummary {
  jobId: string;
  command: string;
  status: JobStatus;
  workerId: string | null;
  attempt: number;
  owner: string;
  tags: string[];
  createdAt: string;
  startedAt: string | null;
  completedAt: string | null;
  exitCode: number | null;
  failure: FailureKind | null;
  outputBytes: number;
  /** Higher runs first (-100 to 100). */
  priority: number;
}

export interface JobList {
  jobs: JobSummary[];
  count: number;
  nextCursor: string | null;
}

export interface Isolation {
  active: string[];
  missing: string[];
  mode: string;
}

export interface WorkerView {
  workerId: string;
  status: 'online' | 'draining' | 'offline' | string;
  kind: 'agent' | 'legacy' | string;
  hostname: string;
  os: string;
  version: string;
  cpuCount: number;
  totalMemoryMb: number;
  tags: string[];
  slots: number;
  slotsUsed: number;
  currentJobs: string[];
  isolation: Isolation;
  connectedAt: string | null;
  lastHeartbeat: string | null;
  /** On a cluster of hubs: the hub holding the worker's connection. */
  hub?: string;
  /** Email of the admin who drained it (it takes no new jobs until resumed); absent when not drained. */
  drainedBy?: string;
  /** RFC 3339: when it was drained. */
  drainedAt?: string;
}

export interface MintTokenResponse {
  token: string;
  tokenId: string;
  expiresAt: string;
}

/** One live worker token in `GET /api/workers/tokens` (never the token itself). */
export interface WorkerTokenView {
  tokenId: string;
  name?: string | null;
  createdBy: string;
  createdAt: string;
  expiresAt: string;
  /** Tag scope; absent: any tags. */
  tags?: string[] | null;
  /** Worker ids enrolled with it. */
  workers: string[];
}

/** `DELETE /api/workers/tokens/{id}`. */
export interface RevokeTokenResponse {
  tokenId: string;
  /** Agents whose sessions were closed now. */
  closedSessions: string[];
}

/** Browser -> hub on /ws/client. */
export type ClientMsg =
  | { type: 'subscribeOutput'; jobId: string; offset: number }
  | { type: 'unsubscribeOutput'; jobId: string }
  | { type: 'subscribeJobs' }
  | { type: 'subscribeWorkers' };

/** Hub -> browser on /ws/client. */
export type ServerMsg =
  | { type: 'output'; jobId: string; offset: number; stream: StreamKind; data: string; /** When the hub stored the bytes (Unix ms; 0 or absent: unknown). */ timeMs?: number }
  | { type: 'outputAttempt'; jobId: string; offset: number; attempt: number }
  | {
      type: 'outputSkipped';
      jobId: string;
      offset: number;
      /** Why the bytes are not stored; absent from hubs before the field (then `cap`). */
      reason?: 'cap' | 'earlierAttempt';
    }
  | {
      type: 'outputEnd';
      jobId: string;
      offset: number;
      status: JobStatus;
      exitCode?: number;
      signal?: number;
      failure?: FailureKind;
    }
  | { type: 'queued'; jobId: string; position: number; noMatchingWorker: boolean; reason?: WaitReason }
  | ({ type: 'job' } & JobSummary)
  | ({ type: 'worker' } & WorkerView)
  | { type: 'error'; code: string; message: string };
