import { describe, expect, it } from 'vitest';
import { decodeBase64, OutputAssembler, type Delivery } from './outputStream';

const enc = new TextEncoder();
const dec = new TextDecoder();
const b = (s: string) => enc.encode(s);
const text = (d: Delivery) => d.write.map((x) => dec.decode(x)).join('');

describe('OutputAssembler', () => {
  it('delivers contiguous chunks in order', () => {
    const a = new OutputAssembler();
    expect(text(a.push(0, b('hello ')))).toBe('hello ');
    expect(text(a.push(6, b('world')))).toBe('world');
    expect(a.end).toBe(11);
  });

  it('ignores exact duplicates', () => {
    const a = new OutputAssembler();
    a.push(0, b('abc'));
    const d = a.push(0, b('abc'));
    expect(d.write).toEqual([]);
    expect(d.gap).toBeNull();
    expect(a.end).toBe(3);
  });

  it('keeps only the new tail of an overlapping chunk', () => {
    const a = new OutputAssembler();
    a.push(0, b('abcdef'));
    expect(text(a.push(3, b('defghi')))).toBe('ghi');
    expect(a.end).toBe(9);
  });

  it('ignores bytes below the current end at the replay/live seam', () => {
    const a = new OutputAssembler();
    a.push(0, b('0123456789'));
    expect(text(a.push(4, b('4567')))).toBe('');
    expect(text(a.push(10, b('X')))).toBe('X');
  });

  it('parks a chunk past a hole and reports the gap to refetch', () => {
    const a = new OutputAssembler();
    a.push(0, b('abc'));
    const d = a.push(6, b('ghi'));
    expect(d.write).toEqual([]);
    expect(d.gap).toEqual({ from: 3, to: 6 });
    // The refetch returns everything from 3 on, overlapping the parked chunk.
    const filled = a.push(3, b('defgh'));
    expect(text(filled)).toBe('defghi');
    expect(filled.gap).toBeNull();
    expect(a.end).toBe(9);
  });

  it('drains several parked chunks in offset order, whatever their arrival order', () => {
    const a = new OutputAssembler();
    a.push(6, b('gh'));
    a.push(3, b('def'));
    a.push(8, b('ij'));
    expect(a.push(3, b('def')).gap).toEqual({ from: 0, to: 3 });
    expect(text(a.push(0, b('abc')))).toBe('abcdefghij');
  });

  it('jumps forward on outputSkipped and reports the dropped range once', () => {
    const a = new OutputAssembler();
    const d = a.skip(1000);
    expect(d.skipped).toEqual({ from: 0, to: 1000 });
    expect(a.end).toBe(1000);
    expect(a.skip(500).skipped).toBeNull();
    expect(text(a.push(990, b('0123456789abc')))).toBe('abc');
    expect(a.skippedBytes).toBe(1000);
  });

  it('delivers parked data reached by a skip', () => {
    const a = new OutputAssembler();
    a.push(10, b('XYZ'));
    const d = a.skip(11);
    expect(text(d)).toBe('YZ');
    expect(a.end).toBe(13);
  });

  it('reports completion only when every byte up to outputEnd arrived', () => {
    const a = new OutputAssembler();
    a.push(0, b('abc'));
    const d = a.finish(5);
    expect(d.complete).toBe(false);
    expect(d.gap).toEqual({ from: 3, to: 5 });
    const e = a.push(3, b('de'));
    expect(e.complete).toBe(true);
    expect(e.gap).toBeNull();
  });

  it('is complete at once for an empty finished log', () => {
    const a = new OutputAssembler();
    expect(a.finish(0).complete).toBe(true);
  });

  it('bounds parked bytes and asks to refetch what it dropped', () => {
    const a = new OutputAssembler(0, 4);
    a.push(10, b('ab'));
    a.push(20, b('cd'));
    a.push(30, b('ef')); // over the bound: the furthest chunk is dropped
    const d = a.push(0, b('0123456789ab'));
    expect(text(d)).toBe('0123456789ab');
    expect(d.gap).toEqual({ from: 12, to: 20 });
    const e = a.push(12, b('xxxxxxxxcdyyyyyyyyef'));
    expect(text(e)).toBe('xxxxxxxxcdyyyyyyyyef');
    expect(a.end).toBe(32);
  });

  it('resumes from a start offset', () => {
    const a = new OutputAssembler(100);
    expect(text(a.push(90, b('0123456789ABC')))).toBe('ABC');
  });

  it('ignores empty chunks', () => {
    const a = new OutputAssembler();
    const d = a.push(5, new Uint8Array());
    expect(d.gap).toBeNull();
    expect(a.end).toBe(0);
  });
});

describe('decodeBase64', () => {
  it('decodes bytes including non-UTF-8 and escapes', () => {
    expect(Array.from(decodeBase64('G1szMm1oaQ=='))).toEqual(Array.from(b('\x1b[32mhi')));
    expect(Array.from(decodeBase64('/wA='))).toEqual([255, 0]);
    expect(decodeBase64('').length).toBe(0);
  });
});
