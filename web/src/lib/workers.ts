// The workers list: a REST snapshot merged with live `worker` events.

import type { WorkerView } from '../types';

const STATUS_ORDER: Record<string, number> = { online: 0, draining: 1, offline: 2 };

/** Online first, then draining, then offline; by host name, then id. */
export function compareWorkers(a: WorkerView, b: WorkerView): number {
  const sa = STATUS_ORDER[a.status] ?? 3;
  const sb = STATUS_ORDER[b.status] ?? 3;
  if (sa !== sb) return sa - sb;
  if (a.hostname !== b.hostname) return a.hostname < b.hostname ? -1 : 1;
  return a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : 0;
}

/** Inserts or replaces one worker, keeping the list sorted. */
export function upsertWorker(list: WorkerView[], w: WorkerView): WorkerView[] {
  const next = list.filter((x) => x.workerId !== w.workerId);
  next.push(w);
  return next.sort(compareWorkers);
}
