import type { JobStatus } from '../types';

/** A coloured pill with the status text (tests read the text). */
export function StatusBadge({ status }: { status: JobStatus | string }) {
  return (
    <span class={`badge badge-${status}`} data-status={status}>
      {status}
    </span>
  );
}
