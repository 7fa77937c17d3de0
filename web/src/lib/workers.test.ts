import { describe, expect, it } from 'vitest';
import type { WorkerView } from '../types';
import { upsertWorker } from './workers';

const w = (id: string, status: string, hostname = 'host'): WorkerView => ({
  workerId: id,
  status,
  kind: 'agent',
  hostname,
  os: 'linux',
  version: '0.1.0',
  cpuCount: 4,
  totalMemoryMb: 8192,
  tags: [],
  slots: 2,
  slotsUsed: 0,
  currentJobs: [],
  isolation: { active: [], missing: [], mode: 'best-effort' },
  connectedAt: null,
  lastHeartbeat: null,
});

describe('upsertWorker', () => {
  it('adds, replaces and orders online workers first', () => {
    let l = upsertWorker([], w('a', 'offline', 'alpha'));
    l = upsertWorker(l, w('b', 'online', 'beta'));
    expect(l.map((x) => x.workerId)).toEqual(['b', 'a']);
    l = upsertWorker(l, { ...w('a', 'online', 'alpha'), slotsUsed: 1 });
    expect(l.map((x) => x.workerId)).toEqual(['a', 'b']);
    expect(l[0]!.slotsUsed).toBe(1);
    expect(l).toHaveLength(2);
  });
});
