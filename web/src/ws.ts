// The browser's one WebSocket to the hub (`/ws/client`, same origin, cookie-authenticated).
// Pages register interest; the socket reconnects with backoff and re-sends every active
// subscription, output ones from the offset their page has reached, so nothing is lost or
// shown twice across a reconnect.

import { signal } from '@preact/signals';
import type { ClientMsg, JobSummary, ServerMsg, WorkerView } from './types';

export type OutputMsg = Extract<
  ServerMsg,
  { type: 'output' | 'outputSkipped' | 'outputAttempt' | 'outputEnd' }
>;
export type HubError = Extract<ServerMsg, { type: 'error' }>;

interface OutputSub {
  offset: () => number;
  listener: (m: OutputMsg) => void;
}

/** `connecting` until the first open, `live` while open, `offline` between retries. */
export const socketState = signal<'idle' | 'connecting' | 'live' | 'offline'>('idle');

class HubSocket {
  private ws: WebSocket | null = null;
  private wanted = false;
  private retry = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private jobListeners = new Set<(j: JobSummary) => void>();
  private workerListeners = new Set<(w: WorkerView) => void>();
  private errorListeners = new Set<(e: HubError) => void>();
  private openListeners = new Set<() => void>();
  private outputs = new Map<string, OutputSub>();
  private jobsSent = false;
  private workersSent = false;
  /** Called after several failed connects in a row (the session may have expired). */
  onRepeatedFailure: () => void = () => {};

  start(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.connect();
  }

  stop(): void {
    this.wanted = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close(1000);
    }
    socketState.value = 'idle';
  }

  private connect(): void {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    socketState.value = this.retry === 0 ? 'connecting' : 'offline';
    const ws = new WebSocket(`${proto}//${location.host}/ws/client`);
    this.ws = ws;
    this.jobsSent = false;
    this.workersSent = false;
    ws.onopen = () => {
      this.retry = 0;
      socketState.value = 'live';
      this.resubscribe();
      for (const f of this.openListeners) f();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg: ServerMsg;
      try {
        msg = JSON.parse(ev.data) as ServerMsg;
      } catch {
        return;
      }
      this.dispatch(msg);
    };
    ws.onerror = () => {
      // onclose follows and schedules the retry
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (!this.wanted) return;
      socketState.value = 'offline';
      const delay = Math.min(10_000, 500 * 2 ** this.retry);
      this.retry++;
      if (this.retry % 3 === 0) this.onRepeatedFailure();
      this.timer = setTimeout(() => {
        this.timer = null;
        if (this.wanted) this.connect();
      }, delay);
    };
  }

  private dispatch(msg: ServerMsg): void {
    switch (msg.type) {
      case 'output':
      case 'outputSkipped':
      case 'outputAttempt':
      case 'outputEnd':
        this.outputs.get(msg.jobId)?.listener(msg);
        break;
      case 'job': {
        const { type: _t, ...job } = msg;
        for (const f of this.jobListeners) f(job);
        break;
      }
      case 'worker': {
        const { type: _t, ...w } = msg;
        for (const f of this.workerListeners) f(w);
        break;
      }
      case 'error':
        for (const f of this.errorListeners) f(msg);
        break;
    }
  }

  private send(msg: ClientMsg): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  private resubscribe(): void {
    if (this.jobListeners.size > 0) this.sendJobs();
    if (this.workerListeners.size > 0) this.sendWorkers();
    for (const [jobId, sub] of this.outputs) {
      this.send({ type: 'subscribeOutput', jobId, offset: sub.offset() });
    }
  }

  private sendJobs(): void {
    if (this.jobsSent || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.jobsSent = true;
    this.send({ type: 'subscribeJobs' });
  }

  private sendWorkers(): void {
    if (this.workersSent || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.workersSent = true;
    this.send({ type: 'subscribeWorkers' });
  }

  /** Live `job` events (the protocol has no unsubscribe: the listener is just dropped). */
  onJob(f: (j: JobSummary) => void): () => void {
    this.jobListeners.add(f);
    this.sendJobs();
    return () => this.jobListeners.delete(f);
  }

  onWorker(f: (w: WorkerView) => void): () => void {
    this.workerListeners.add(f);
    this.sendWorkers();
    return () => this.workerListeners.delete(f);
  }

  onError(f: (e: HubError) => void): () => void {
    this.errorListeners.add(f);
    return () => this.errorListeners.delete(f);
  }

  /** Called after every (re)connect: pages refetch what they may have missed meanwhile. */
  onOpen(f: () => void): () => void {
    this.openListeners.add(f);
    return () => this.openListeners.delete(f);
  }

  /** Streams a job's output from `offset()` (asked again on every reconnect). */
  subscribeOutput(jobId: string, offset: () => number, listener: (m: OutputMsg) => void): () => void {
    this.outputs.set(jobId, { offset, listener });
    this.send({ type: 'subscribeOutput', jobId, offset: offset() });
    return () => {
      if (this.outputs.get(jobId)?.listener !== listener) return;
      this.outputs.delete(jobId);
      this.send({ type: 'unsubscribeOutput', jobId });
    };
  }

  /** Re-asks for output from `offset()` (after a hole the refetch could not fill). */
  resubscribeOutput(jobId: string): void {
    const sub = this.outputs.get(jobId);
    if (!sub) return;
    this.send({ type: 'unsubscribeOutput', jobId });
    this.send({ type: 'subscribeOutput', jobId, offset: sub.offset() });
  }
}

export const hubSocket = new HubSocket();
