import {
  artifactFileName,
  artifactFileUrl,
  artifactsZipUrl,
  shortSha,
  skippedSummary,
  sortArtifacts,
  totalSize,
} from '../lib/artifacts';
import { formatBytes } from '../lib/format';
import { isTerminal } from '../lib/jobs';
import type { JobView } from '../types';

/**
 * The job page's artifacts card: the requested globs, then (once the job has ended) the
 * collected files with a download link each and one for the whole ZIP, what was skipped and
 * why, and the hub's error when nothing could be kept. Downloads are plain links: the session
 * cookie authenticates them, and the hub answers with `Content-Disposition: attachment`.
 * Renders nothing for a job that asked for no artifacts and has none.
 */
export function Artifacts({ job }: { job: JobView }) {
  const patterns = job.artifactPatterns;
  const files = sortArtifacts(job.artifacts);
  const skipped = job.artifactsSkipped;
  if (patterns.length === 0 && files.length === 0 && skipped.length === 0 && !job.artifactsError) return null;
  const ended = isTerminal(job.status);
  const summary = skippedSummary(skipped, job.artifactsSkippedTotal);
  return (
    <section class="card artifacts" aria-label="Artifacts">
      <div class="artifacts-head">
        <h2>Artifacts</h2>
        {files.length > 0 && (
          <a class="btn btn-small" href={artifactsZipUrl(job)} download={`cmdx-${job.jobId}-artifacts.zip`}>
            Download all (ZIP)
          </a>
        )}
      </div>
      {patterns.length > 0 && (
        <p class="hint artifacts-patterns" aria-label="Artifact patterns">
          <span>{ended ? 'Collected from' : 'Files matching'}</span>
          {patterns.map((p) => (
            <code key={p} class="chip">
              {p}
            </code>
          ))}
          {!ended && <span>are collected when the job ends.</span>}
        </p>
      )}
      {job.artifactsError && (
        <div class="alert alert-error" role="alert">
          <strong>No artifacts kept:</strong> {job.artifactsError}
        </div>
      )}
      {files.length > 0 ? (
        <div class="table-wrap">
          <table class="table artifacts-table">
            <thead>
              <tr>
                <th scope="col">Path</th>
                <th scope="col">Size</th>
                <th scope="col">SHA-256</th>
                <th scope="col">
                  <span class="visually-hidden">Download</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {files.map((f) => (
                <tr key={f.path} data-path={f.path}>
                  <td class="mono artifact-path">{f.path}</td>
                  <td class="nowrap">{formatBytes(f.size)}</td>
                  <td class="mono" title={f.sha256}>
                    {shortSha(f.sha256)}
                  </td>
                  <td>
                    <a
                      href={artifactFileUrl(job.jobId, f.path)}
                      download={artifactFileName(f.path)}
                      aria-label={`Download ${f.path}`}
                    >
                      Download
                    </a>
                  </td>
                </tr>
              ))}
            </tbody>
            <tfoot>
              <tr>
                <td class="muted">
                  {files.length} {files.length === 1 ? 'file' : 'files'}
                </td>
                <td class="muted nowrap">{formatBytes(totalSize(files))}</td>
                <td colSpan={2} />
              </tr>
            </tfoot>
          </table>
        </div>
      ) : (
        ended &&
        !job.artifactsError && <p class="muted">No files were collected.</p>
      )}
      {summary.total > 0 && (
        <details class="artifacts-skipped" open={summary.open}>
          <summary>
            Skipped: {summary.total} {summary.total === 1 ? 'path' : 'paths'}
          </summary>
          <ul>
            {skipped.map((s, i) => (
              <li key={`${i}:${s.path}`}>
                <code>{s.path}</code> <span class="muted">— {s.reason}</span>
              </li>
            ))}
          </ul>
          {summary.unlisted > 0 && <p class="hint">…and {summary.unlisted.toLocaleString('en')} more, not listed.</p>}
        </details>
      )}
    </section>
  );
}
