import { describe, expect, it } from 'vitest';
import { OutputFollower } from './outputFollower';

const b64 = (s: string) => btoa(s);
const dec = new TextDecoder();

function setup(stored: string, firstStored = 0) {
  const written: string[] = [];
  const fetches: number[] = [];
  const ends: number[] = [];
  let resubscribed = 0;
  const f = new OutputFollower({
    write: (d) => written.push(typeof d === 'string' ? d : dec.decode(d)),
    fetchFrom: async (offset) => {
      fetches.push(offset);
      const start = Math.max(offset, firstStored);
      return { offset: start, bytes: new TextEncoder().encode(stored.slice(start)) };
    },
    resubscribe: () => resubscribed++,
    onComplete: (m) => ends.push(m.offset),
    later: (fn) => fn(),
  });
  return { f, written, fetches, ends, resubscribed: () => resubscribed };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe('OutputFollower', () => {
  it('replays then follows live with no duplicate at the seam', () => {
    const { f, written } = setup('');
    f.handle({ type: 'output', jobId: 'j', offset: 0, stream: 'stdout', data: b64('line 1\n') });
    f.handle({ type: 'output', jobId: 'j', offset: 0, stream: 'stdout', data: b64('line 1\nline 2\n') });
    f.handle({ type: 'output', jobId: 'j', offset: 14, stream: 'stdout', data: b64('line 3\n') });
    expect(written.join('')).toBe('line 1\nline 2\nline 3\n');
  });

  it('refetches a hole from the store and then writes the parked chunk', async () => {
    const log = 'aaaa' + 'bbbb' + 'cccc';
    const { f, written, fetches } = setup(log);
    f.handle({ type: 'output', jobId: 'j', offset: 0, stream: 'stdout', data: b64('aaaa') });
    f.handle({ type: 'output', jobId: 'j', offset: 8, stream: 'stdout', data: b64('cccc') });
    await tick();
    expect(fetches).toEqual([4]);
    expect(written.join('')).toBe(log);
    expect(f.offset).toBe(12);
  });

  it('writes a notice for skipped bytes and completes on outputEnd', () => {
    const { f, written, ends } = setup('');
    f.handle({ type: 'outputSkipped', jobId: 'j', offset: 100 });
    f.handle({ type: 'output', jobId: 'j', offset: 100, stream: 'stderr', data: b64('tail') });
    f.handle({ type: 'outputEnd', jobId: 'j', offset: 104, status: 'completed', exitCode: 0 });
    expect(written.join('')).toContain('100 bytes dropped');
    expect(written[written.length - 1]).toBe('tail');
    expect(ends).toEqual([104]);
  });

  it("says a retried job's earlier attempts are not kept, not that the cap dropped them", () => {
    const { f, written } = setup('');
    f.handle({ type: 'outputSkipped', jobId: 'j', offset: 6, reason: 'earlierAttempt' });
    f.handle({ type: 'output', jobId: 'j', offset: 6, stream: 'stdout', data: b64('again') });
    const text = written.join('');
    expect(text).toContain('the 6 bytes of its earlier attempts are not kept');
    expect(text).not.toContain('output cap');
    expect(written[written.length - 1]).toBe('again');
  });

  it("marks where a retried job's new attempt starts in a log already shown", () => {
    const { f, written } = setup('');
    f.handle({ type: 'output', jobId: 'j', offset: 0, stream: 'stdout', data: b64('first') });
    f.handle({ type: 'outputAttempt', jobId: 'j', offset: 5, attempt: 2 });
    f.handle({ type: 'output', jobId: 'j', offset: 5, stream: 'stdout', data: b64('again') });
    expect(written).toEqual([
      'first',
      "[… the job was retried: attempt 2's output follows …]",
      'again',
    ]);
  });

  it('fetches the rest when outputEnd announces more than was received', async () => {
    const { f, written, ends } = setup('hello world');
    f.handle({ type: 'output', jobId: 'j', offset: 0, stream: 'stdout', data: b64('hello') });
    f.handle({ type: 'outputEnd', jobId: 'j', offset: 11, status: 'failed', exitCode: 1 });
    expect(ends).toEqual([]);
    await tick();
    expect(written.join('')).toBe('hello world');
    expect(ends).toEqual([11]);
  });

  it('continues after a refetch that starts later than asked (head dropped by the cap)', async () => {
    const { f, written } = setup('0123456789abcdef', 10);
    f.handle({ type: 'output', jobId: 'j', offset: 14, stream: 'stdout', data: b64('ef') });
    await tick();
    expect(written.join('')).toContain('10 bytes dropped');
    expect(written.slice(-1)[0]).toBe('abcdef');
    expect(f.offset).toBe(16);
  });

  it('re-streams when refetches keep coming back empty', async () => {
    const { f, resubscribed } = setup('');
    f.handle({ type: 'output', jobId: 'j', offset: 5, stream: 'stdout', data: b64('x') });
    for (let i = 0; i < 10; i++) await tick();
    expect(resubscribed()).toBe(1);
  });
});
