import { describe, expect, it } from 'vitest';
import {
  commandPreview,
  failureLabel,
  formatBytes,
  formatDuration,
  formatRelative,
  jobDurationMs,
  parseEnv,
  parseTags,
  formatTime,
  parsePriority,
  parseTimeout,
  shortId,
} from './format';

describe('format', () => {
  it('formatBytes', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(512 * 1024 * 1024)).toBe('512 MiB');
    expect(formatBytes(null)).toBe('—');
  });

  it('formatDuration', () => {
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(12_340)).toBe('12.3 s');
    expect(formatDuration(245_000)).toBe('4m 05s');
    expect(formatDuration(7_380_000)).toBe('2h 03m');
    expect(formatDuration(null)).toBe('—');
  });

  it('jobDurationMs uses now while running', () => {
    expect(jobDurationMs('2026-01-01T00:00:00Z', '2026-01-01T00:00:02.5Z')).toBe(2500);
    expect(jobDurationMs('2026-01-01T00:00:00Z', null, Date.parse('2026-01-01T00:01:00Z'))).toBe(60_000);
    expect(jobDurationMs(null, null)).toBeNull();
  });

  it('formatRelative', () => {
    const now = Date.parse('2026-01-01T12:00:00Z');
    expect(formatRelative('2026-01-01T11:59:58Z', now)).toBe('just now');
    expect(formatRelative('2026-01-01T11:59:30Z', now)).toBe('30 s ago');
    expect(formatRelative('2026-01-01T11:55:00Z', now)).toBe('5 min ago');
    expect(formatRelative('2026-01-01T09:00:00Z', now)).toBe('3 h ago');
    expect(formatRelative(null, now)).toBe('—');
  });

  it('failureLabel', () => {
    expect(failureLabel('oom')).toBe('out of memory');
    expect(failureLabel(null)).toBe('—');
  });

  it('shortId and commandPreview', () => {
    expect(shortId('01a21adb18fc72a839a7')).toBe('01a21adb18fc72a839a7');
    expect(shortId('6f1c2a3b-1111-2222-3333-444455556666')).toBe('6f1c2a3b…556666');
    expect(shortId('abc')).toBe('abc');
    expect(commandPreview('make\nmake test')).toBe('make …');
    expect(commandPreview('x'.repeat(100), 10)).toBe(`${'x'.repeat(9)}…`);
  });

  it('parseEnv reads NAME=value lines, skipping blanks and comments, naming a bad line', () => {
    expect(parseEnv('A=1\n\n# note\nB = two words \nC=x=y\r\nD=')).toEqual({
      value: { A: '1', B: ' two words ', C: 'x=y', D: '' },
    });
    expect(parseEnv('')).toEqual({ value: {} });
    expect(parseEnv('A=1\noops')).toEqual({ error: 'Line 2: write NAME=value' });
    expect(parseEnv('=v')).toEqual({ error: 'Line 1: write NAME=value' });
    expect(parseEnv('A B=1')).toEqual({ error: 'Line 1: write NAME=value' });
    expect(parseEnv('A=1\nA=2')).toEqual({ error: 'Line 2: A is set twice' });
  });

  it('parseTags splits on commas and spaces, dropping duplicates', () => {
    expect(parseTags(' linux, gpu  linux,,')).toEqual(['linux', 'gpu']);
    expect(parseTags('')).toEqual([]);
  });

  it('formatTime names the zone', () => {
    expect(formatTime('2026-01-02T13:04:05Z', 'UTC')).toBe('2026-01-02 13:04:05 UTC');
    expect(formatTime('2026-01-02T13:04:05Z', 'Europe/Paris')).toMatch(/^2026-01-02 14:04:05 (CET|GMT\+1)$/);
    expect(formatTime(null)).toBe('—');
    expect(formatTime('garbage')).toBe('—');
  });

  it('parsePriority', () => {
    expect(parsePriority('')).toEqual({ value: null });
    expect(parsePriority(' -5 ')).toEqual({ value: -5 });
    expect(parsePriority('100')).toEqual({ value: 100 });
    expect(parsePriority('101')).toHaveProperty('error');
    expect(parsePriority('-101')).toHaveProperty('error');
    expect(parsePriority('high')).toHaveProperty('error');
    expect(parsePriority('1.5')).toHaveProperty('error');
  });

  it('parseTimeout', () => {
    expect(parseTimeout('')).toEqual({ value: null });
    expect(parseTimeout(' 60 ')).toEqual({ value: 60 });
    expect(parseTimeout('1.5')).toHaveProperty('error');
    expect(parseTimeout('0')).toHaveProperty('error');
  });
});
