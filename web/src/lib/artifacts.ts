// Job artifacts for display: download URLs, ordering, short hashes, the skipped list, and the
// glob field of the new-job form.

import type { ArtifactSkip, ArtifactView, JobView } from '../types';

/** URL of all of a job's artifacts as one ZIP (the hub's `artifactsUrl` when it sent one). */
export function artifactsZipUrl(job: Pick<JobView, 'jobId' | 'artifactsUrl'>): string {
  return job.artifactsUrl ?? `/api/jobs/${encodeURIComponent(job.jobId)}/artifacts`;
}

/**
 * URL of one artifact file. The path keeps its `/` separators; every segment is
 * percent-encoded, so `?`, `#`, `%` and spaces in names reach the hub as part of the path.
 */
export function artifactFileUrl(jobId: string, path: string): string {
  const segments = path.split('/').map((s) => encodeURIComponent(s));
  return `/api/jobs/${encodeURIComponent(jobId)}/artifacts/${segments.join('/')}`;
}

/** The file name a download is saved under: the path's last segment. */
export function artifactFileName(path: string): string {
  const i = path.lastIndexOf('/');
  return i >= 0 ? path.slice(i + 1) : path;
}

/** The first 12 hex digits of a sha256, enough to compare by eye. */
export function shortSha(sha256: string): string {
  return sha256.length > 12 ? sha256.slice(0, 12) : sha256;
}

/**
 * Artifacts ordered by path, folder by folder: the files of a folder come before its
 * subfolders' (`dist/app.txt` before `dist/sub/x`), names compared by code point.
 */
export function sortArtifacts(list: readonly ArtifactView[]): ArtifactView[] {
  const key = (p: string) => {
    const parts = p.split('/');
    return { dirs: parts.slice(0, -1), name: parts[parts.length - 1] ?? '' };
  };
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return [...list].sort((x, y) => {
    const a = key(x.path);
    const b = key(y.path);
    const n = Math.min(a.dirs.length, b.dirs.length);
    for (let i = 0; i < n; i++) {
      const c = cmp(a.dirs[i]!, b.dirs[i]!);
      if (c !== 0) return c;
    }
    if (a.dirs.length !== b.dirs.length) return a.dirs.length - b.dirs.length;
    return cmp(a.name, b.name);
  });
}

/** Total bytes of a listing. */
export function totalSize(list: readonly ArtifactView[]): number {
  return list.reduce((sum, a) => sum + a.size, 0);
}

/** Skipped lists up to this long are shown open; longer ones start collapsed. */
export const SKIPPED_OPEN_MAX = 5;

/** What the page says about skipped paths: how many in all, how many more than listed. */
export function skippedSummary(skipped: readonly ArtifactSkip[], total: number): {
  total: number;
  unlisted: number;
  open: boolean;
} {
  const all = Math.max(total, skipped.length);
  return { total: all, unlisted: all - skipped.length, open: all <= SKIPPED_OPEN_MAX };
}

/**
 * Splits the artifact field of the new-job form into globs: whitespace or new lines separate
 * them (not commas: `{a,b}` is glob syntax); duplicates are dropped.
 */
export function parseGlobs(s: string): string[] {
  return s
    .split(/\s+/)
    .map((g) => g.trim())
    .filter((g, i, all) => g.length > 0 && all.indexOf(g) === i);
}
