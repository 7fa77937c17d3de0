// Connects an OutputAssembler to a sink (the terminal), the WebSocket stream and the REST
// refetch of holes. The policy lives here; the byte arithmetic is in outputStream.ts.

import { OutputAssembler, decodeBase64, type Delivery } from './outputStream';
import type { ServerMsg } from '../types';

type OutputMsg = Extract<
  ServerMsg,
  { type: 'output' | 'outputSkipped' | 'outputAttempt' | 'outputEnd' }
>;
type EndMsg = Extract<ServerMsg, { type: 'outputEnd' }>;

export interface FollowerDeps {
  /** Writes contiguous bytes (and notices) to the terminal, with when the hub stored the
   * bytes (Unix ms; null when unknown). */
  write: (data: Uint8Array | string, time: number | null) => void;
  /** Fetches the stored log from `offset` (REST `/output?offset=`); `offset` in the answer is
   * where the bytes really start (later when the output cap dropped them). */
  fetchFrom: (offset: number) => Promise<{ offset: number; bytes: Uint8Array }>;
  /** Asks the hub to stream again from the current end (when a refetch brought nothing). */
  resubscribe: () => void;
  /** The job finished and its whole log was written. */
  onComplete: (end: EndMsg) => void;
  /** Delays a retry (tests pass an immediate one). */
  later?: (f: () => void, ms: number) => void;
}

export class OutputFollower {
  readonly asm = new OutputAssembler();
  private fetching = false;
  private endMsg: EndMsg | null = null;
  private done = false;
  private retries = 0;
  private stopped = false;

  constructor(private readonly deps: FollowerDeps) {}

  /** Byte offset to (re)subscribe from. */
  get offset(): number {
    return this.asm.end;
  }

  stop(): void {
    this.stopped = true;
  }

  handle(msg: OutputMsg): void {
    if (this.stopped) return;
    switch (msg.type) {
      case 'output':
        this.deliver(this.asm.push(msg.offset, decodeBase64(msg.data), msg.timeMs || null));
        break;
      case 'outputSkipped':
        this.deliver(this.asm.skip(msg.offset), msg.reason);
        break;
      case 'outputAttempt':
        // Where the retried job's new attempt starts, when everything before it is written.
        if (msg.offset === this.asm.end) {
          this.deps.write(
            `[… the job was retried: attempt ${msg.attempt}'s output follows …]`,
            null,
          );
        }
        break;
      case 'outputEnd':
        this.endMsg = msg;
        this.deliver(this.asm.finish(msg.offset));
        break;
    }
  }

  private deliver(d: Delivery, reason: 'cap' | 'earlierAttempt' = 'cap'): void {
    if (d.skipped) {
      const n = d.skipped.to - d.skipped.from;
      this.deps.write(
        reason === 'earlierAttempt'
          ? `[… the job was retried: the ${n} bytes of its earlier attempts are not kept …]`
          : `[… ${n} bytes dropped by the output cap …]`,
        null,
      );
    }
    d.write.forEach((chunk, i) => this.deps.write(chunk, d.times[i] ?? null));
    if (d.complete && this.endMsg && !this.done) {
      this.done = true;
      this.deps.onComplete(this.endMsg);
    }
    if (d.gap && !this.fetching) void this.refill(d.gap.from);
  }

  private async refill(from: number): Promise<void> {
    this.fetching = true;
    let got = 0;
    try {
      const slice = await this.deps.fetchFrom(from);
      got = slice.bytes.length;
      if (this.stopped) return;
      this.fetching = false;
      if (slice.offset > from) {
        // The head was dropped by the output cap: say so, then continue where the log starts.
        this.deliver(this.asm.skip(slice.offset));
      }
      if (got > 0) this.deliver(this.asm.push(slice.offset, slice.bytes));
    } catch {
      // fall through to the retry below
    } finally {
      this.fetching = false;
    }
    if (this.stopped || got > 0) {
      this.retries = 0;
      return;
    }
    // Nothing came back: the bytes may not be stored yet. Retry, then re-stream.
    this.retries++;
    const later = this.deps.later ?? ((f, ms) => setTimeout(f, ms));
    later(() => {
      if (this.stopped) return;
      const probe = this.asm.push(this.asm.end, new Uint8Array());
      if (!probe.gap) return;
      if (this.retries >= 3) {
        this.retries = 0;
        this.deps.resubscribe();
      } else void this.refill(probe.gap.from);
    }, 500 * this.retries);
  }
}
