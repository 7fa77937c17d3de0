import { describe, expect, it } from 'vitest';
import type { ArtifactView } from '../types';
import {
  artifactFileName,
  artifactFileUrl,
  artifactsZipUrl,
  parseGlobs,
  shortSha,
  skippedSummary,
  sortArtifacts,
  totalSize,
} from './artifacts';

const a = (path: string, size = 1): ArtifactView => ({ path, size, sha256: 'ab'.repeat(32) });

describe('artifacts', () => {
  it('builds per-file URLs segment by segment', () => {
    expect(artifactFileUrl('j1', 'dist/app.txt')).toBe('/api/jobs/j1/artifacts/dist/app.txt');
    expect(artifactFileUrl('j1', 'r/a b?#%.xml')).toBe('/api/jobs/j1/artifacts/r/a%20b%3F%23%25.xml');
    expect(artifactFileUrl('j/1', 'x')).toBe('/api/jobs/j%2F1/artifacts/x');
    expect(artifactFileUrl('j1', 'ünï/€')).toBe('/api/jobs/j1/artifacts/%C3%BCn%C3%AF/%E2%82%AC');
  });

  it('uses the hub’s ZIP URL, or builds it', () => {
    expect(artifactsZipUrl({ jobId: 'j1', artifactsUrl: '/api/jobs/j1/artifacts' })).toBe('/api/jobs/j1/artifacts');
    expect(artifactsZipUrl({ jobId: 'a b', artifactsUrl: null })).toBe('/api/jobs/a%20b/artifacts');
  });

  it('names downloads after the last segment', () => {
    expect(artifactFileName('dist/sub/blob.bin')).toBe('blob.bin');
    expect(artifactFileName('top.txt')).toBe('top.txt');
  });

  it('shortens hashes', () => {
    expect(shortSha('2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824')).toBe('2cf24dba5fb0');
    expect(shortSha('abc')).toBe('abc');
  });

  it('orders files before subfolders, by code point', () => {
    const sorted = sortArtifacts([a('dist/sub/z'), a('b.txt'), a('dist/b'), a('dist/a-b/c'), a('A.txt'), a('dist/B')]);
    expect(sorted.map((x) => x.path)).toEqual(['A.txt', 'b.txt', 'dist/B', 'dist/b', 'dist/a-b/c', 'dist/sub/z']);
  });

  it('does not reorder its input', () => {
    const list = [a('b'), a('a')];
    sortArtifacts(list);
    expect(list.map((x) => x.path)).toEqual(['b', 'a']);
  });

  it('sums sizes', () => {
    expect(totalSize([a('x', 5), a('y', 300_000)])).toBe(300_005);
    expect(totalSize([])).toBe(0);
  });

  it('summarises skipped paths, collapsing long lists', () => {
    const few = [{ path: 'dist/x', reason: 'symlink' }];
    expect(skippedSummary(few, 1)).toEqual({ total: 1, unlisted: 0, open: true });
    const many = Array.from({ length: 100 }, (_, i) => ({ path: `f${i}`, reason: 'over the file cap' }));
    expect(skippedSummary(many, 5000)).toEqual({ total: 5000, unlisted: 4900, open: false });
    expect(skippedSummary(few, 0)).toEqual({ total: 1, unlisted: 0, open: true });
  });

  it('splits the glob field on whitespace only', () => {
    expect(parseGlobs(' dist/**  reports/*.xml\nsrc/{a,b}.rs dist/** ')).toEqual([
      'dist/**',
      'reports/*.xml',
      'src/{a,b}.rs',
    ]);
    expect(parseGlobs('   ')).toEqual([]);
  });
});
