// Reassembles a job's combined output log from chunks addressed by byte offset.
//
// The hub replays stored bytes, then follows live. Chunks can arrive twice (a resubscribe
// after a reconnect), overlap (a refetch racing the live stream), or leave a hole (a slow
// subscriber resynced further on). The assembler keeps one invariant: every byte it hands out
// is the next byte of the log, exactly once. Bytes below `end` are ignored; chunks beyond
// `end` are parked until the hole before them is filled by a refetch from `end`.

/** What the caller must do after feeding the assembler. */
export interface Delivery {
  /** Contiguous bytes to write to the terminal, in order. */
  write: Uint8Array[];
  /** When the hub stored each of `write` (Unix ms), null when unknown (a REST refetch). */
  times: (number | null)[];
  /** Bytes dropped by the hub's output cap, now unrecoverable: `[from, to)`. */
  skipped: { from: number; to: number } | null;
  /** A hole `[from, to)` precedes parked data (or the log's end): refetch from `from`. */
  gap: { from: number; to: number } | null;
  /** Every byte of a finished log was delivered. */
  complete: boolean;
}

interface Parked {
  offset: number;
  bytes: Uint8Array;
  time: number | null;
}

/** What one delivery writes: bytes and when each was stored. */
interface Out {
  write: Uint8Array[];
  times: (number | null)[];
}

/** Default bound on parked (out-of-order) bytes; past it they are dropped and refetched. */
export const DEFAULT_MAX_PARKED = 8 * 1024 * 1024;

export class OutputAssembler {
  /** Offset of the next byte wanted: everything below it was delivered or skipped. */
  private nextOffset: number;
  /** Total length of the log once the job finished (`outputEnd`). */
  private finalOffset: number | null = null;
  /** Out-of-order chunks, sorted by offset, none below `nextOffset`. */
  private parked: Parked[] = [];
  private parkedBytes = 0;
  /** Bytes that were skipped in total (output cap). */
  skippedBytes = 0;

  constructor(
    startOffset = 0,
    private readonly maxParked = DEFAULT_MAX_PARKED,
  ) {
    this.nextOffset = startOffset;
  }

  /** Offset of the next byte wanted (where a resubscribe or refetch should start). */
  get end(): number {
    return this.nextOffset;
  }

  /** Log length announced by `outputEnd`, if the job finished. */
  get final(): number | null {
    return this.finalOffset;
  }

  /** True once a finished log was delivered up to its end. */
  get complete(): boolean {
    return this.finalOffset !== null && this.nextOffset >= this.finalOffset;
  }

  /** Bytes `data` found at `offset` (a live chunk or a refetch), stored at `time` (Unix ms)
   * when known. */
  push(offset: number, data: Uint8Array, time: number | null = null): Delivery {
    const out = newOut();
    this.accept(offset, data, time, out);
    return this.result(out, null);
  }

  /** The hub dropped everything below `offset` (output cap); continue from there. */
  skip(offset: number): Delivery {
    if (offset <= this.nextOffset) return this.result(newOut(), null);
    const skipped = { from: this.nextOffset, to: offset };
    this.skippedBytes += offset - this.nextOffset;
    this.nextOffset = offset;
    const out = newOut();
    this.drain(out);
    return this.result(out, skipped);
  }

  /** The job finished and its log is `offset` bytes long. */
  finish(offset: number): Delivery {
    this.finalOffset = offset;
    return this.result(newOut(), null);
  }

  private accept(offset: number, data: Uint8Array, time: number | null, out: Out): void {
    if (data.length === 0) return;
    const stop = offset + data.length;
    if (stop <= this.nextOffset) return; // entirely old: duplicate
    if (offset <= this.nextOffset) {
      const fresh = data.subarray(this.nextOffset - offset);
      out.write.push(fresh);
      out.times.push(time);
      this.nextOffset = stop;
      this.drain(out);
      return;
    }
    this.park(offset, data, time);
  }

  private park(offset: number, data: Uint8Array, time: number | null): void {
    // Insert sorted by offset; duplicates and overlaps are trimmed when drained.
    let i = this.parked.length;
    while (i > 0 && this.parked[i - 1]!.offset > offset) i--;
    this.parked.splice(i, 0, { offset, bytes: data, time });
    this.parkedBytes += data.length;
    while (this.parkedBytes > this.maxParked && this.parked.length > 0) {
      // Drop the furthest chunk: it is refetched after the hole before it is filled.
      const dropped = this.parked.pop()!;
      this.parkedBytes -= dropped.bytes.length;
    }
  }

  private drain(out: Out): void {
    while (this.parked.length > 0 && this.parked[0]!.offset <= this.nextOffset) {
      const p = this.parked.shift()!;
      this.parkedBytes -= p.bytes.length;
      const stop = p.offset + p.bytes.length;
      if (stop <= this.nextOffset) continue;
      out.write.push(p.bytes.subarray(this.nextOffset - p.offset));
      out.times.push(p.time);
      this.nextOffset = stop;
    }
  }

  private result(out: Out, skipped: Delivery['skipped']): Delivery {
    let gap: Delivery['gap'] = null;
    if (this.parked.length > 0) {
      gap = { from: this.nextOffset, to: this.parked[0]!.offset };
    } else if (this.finalOffset !== null && this.nextOffset < this.finalOffset) {
      gap = { from: this.nextOffset, to: this.finalOffset };
    }
    return { ...out, skipped, gap, complete: this.complete };
  }
}

function newOut(): Out {
  return { write: [], times: [] };
}

/** Decodes standard base64 (the wire form of output bytes) into bytes. */
export function decodeBase64(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
