// Formatting of sizes, durations, times and job outcomes for display.

import type { FailureKind, JobStatus } from '../types';

/** `1536` -> `1.5 KiB`. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

/** Milliseconds as `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`. */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 0) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.floor(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  return `${m}m ${String(sec).padStart(2, '0')}s`;
}

/** Run time of a job: start to end, or start to `now` while it runs. */
export function jobDurationMs(
  startedAt: string | null | undefined,
  completedAt: string | null | undefined,
  now: number = Date.now(),
): number | null {
  if (!startedAt) return null;
  const start = Date.parse(startedAt);
  if (Number.isNaN(start)) return null;
  const end = completedAt ? Date.parse(completedAt) : now;
  if (Number.isNaN(end)) return null;
  return Math.max(0, end - start);
}

/** `3 s ago`, `5 min ago`, `2 h ago`, else a date. */
export function formatRelative(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '—';
  const d = Math.round((now - t) / 1000);
  if (d < 0) return 'just now';
  if (d < 5) return 'just now';
  if (d < 60) return `${d} s ago`;
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return formatTime(iso);
}

/** `2026-01-02 13:04:05 CET` in the viewer's time zone, named (`UTC`, `GMT+1`, `CET`, …) so a
 * time copied into a ticket means the same to everyone. */
export function formatTime(iso: string | null | undefined, timeZone?: string): string {
  if (!iso) return '—';
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return '—';
  const get = zonedParts(t, timeZone, { year: 'numeric', month: '2-digit', day: '2-digit', timeZoneName: 'short' });
  return `${get('year')}-${get('month')}-${get('day')} ${get('hour')}:${get('minute')}:${get('second')} ${get('timeZoneName')}`;
}

/** A log line's time as the terminal shows it: `HH:MM:SS.mmm` in `timeZone` (the viewer's). */
export function formatStamp(ms: number, timeZone?: string): string {
  const get = zonedParts(new Date(ms), timeZone, {});
  return `${get('hour')}:${get('minute')}:${get('second')}.${String(ms % 1000).padStart(3, '0')}`;
}

/** The parts of `t` in `timeZone` (hours, minutes and seconds always, 24-hour, two digits). */
function zonedParts(t: Date, timeZone: string | undefined, more: Intl.DateTimeFormatOptions) {
  const parts = new Intl.DateTimeFormat('en-GB', {
    timeZone,
    ...more,
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    hourCycle: 'h23',
  }).formatToParts(t);
  return (type: Intl.DateTimeFormatPartTypes) => parts.find((p) => p.type === type)?.value ?? '';
}

const FAILURE_LABELS: Record<FailureKind, string> = {
  exit_code: 'non-zero exit code',
  timeout: 'timed out',
  oom: 'out of memory',
  killed: 'killed by a signal',
  setup: 'setup failed (download or extract)',
  sandbox: 'sandbox error',
  worker_lost: 'worker lost',
  image: 'image unusable (pull or unpack)',
};

export function failureLabel(f: FailureKind | null | undefined): string {
  if (!f) return '—';
  return FAILURE_LABELS[f] ?? f.replace(/_/g, ' ');
}

export const STATUS_LABELS: Record<JobStatus, string> = {
  queued: 'queued',
  assigned: 'assigned',
  running: 'running',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'cancelled',
};

/**
 * A compact id for tables. Hub ids start with a timestamp, so a prefix alone is not unique:
 * ids up to 20 characters stay whole, longer ones keep both ends.
 */
export function shortId(id: string | null | undefined): string {
  if (!id) return '—';
  return id.length > 20 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id;
}

/** The first line of a command, shortened for tables. */
export function commandPreview(cmd: string, max = 90): string {
  const lines = cmd.split('\n');
  let first = lines[0] ?? '';
  const more = lines.length > 1;
  if (first.length > max) first = `${first.slice(0, max - 1)}…`;
  else if (more) first = `${first} …`;
  return first;
}

/** Splits a tag field (`a, b c`) into tags. */
export function parseTags(s: string): string[] {
  return s
    .split(/[\s,]+/)
    .map((t) => t.trim())
    .filter((t, i, all) => t.length > 0 && all.indexOf(t) === i);
}

/** A job priority typed in a form: empty (the default, 0) or a whole number from -100 to 100. */
export function parsePriority(s: string): { value: number | null } | { error: string } {
  const t = s.trim();
  if (!t) return { value: null };
  if (!/^-?\d+$/.test(t)) return { error: 'Priority must be a whole number' };
  const v = Number(t);
  if (v < -100 || v > 100) return { error: 'Priority must be between -100 and 100' };
  return { value: v };
}

/** Parses a timeout field in seconds; `null` when empty, an error text when invalid. */
export function parseTimeout(s: string): { value: number | null } | { error: string } {
  const t = s.trim();
  if (!t) return { value: null };
  if (!/^\d+$/.test(t)) return { error: 'Timeout must be a whole number of seconds' };
  const v = Number(t);
  if (v < 1) return { error: 'Timeout must be at least 1 second' };
  return { value: v };
}

/** Environment variables typed one per line as `NAME=value` (blank lines and `#` comments
 * skipped; the value is everything after the first `=`, spaces kept); an error names the line. */
export function parseEnv(s: string): { value: Record<string, string> } | { error: string } {
  const env: Record<string, string> = {};
  const lines = s.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (!line.trim() || line.trimStart().startsWith('#')) continue;
    const eq = line.indexOf('=');
    const name = eq < 0 ? '' : line.slice(0, eq).trim();
    if (!name || /\s|\0/.test(name)) return { error: `Line ${i + 1}: write NAME=value` };
    if (name in env) return { error: `Line ${i + 1}: ${name} is set twice` };
    env[name] = line.slice(eq + 1);
  }
  if (Object.keys(env).length > 128) return { error: 'At most 128 variables' };
  return { value: env };
}
