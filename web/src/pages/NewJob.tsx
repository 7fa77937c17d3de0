import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, uploadFile, type UploadHandle } from '../api';
import { ErrorBanner, PageHeader } from '../components/Layout';
import { parseGlobs } from '../lib/artifacts';
import { formatBytes, parseEnv, parsePriority, parseTags, parseTimeout, shortId } from '../lib/format';
import { jobPath } from '../lib/routes';
import { location$, navigate } from '../state';
import type { FileView, SubmitRequest } from '../types';

type Upload =
  | { state: 'none' }
  | { state: 'uploading'; name: string; loaded: number; total: number }
  | { state: 'done'; file: FileView }
  | { state: 'error'; name: string; message: string };

export function NewJob() {
  const [command, setCommand] = useState('');
  const [timeout, setTimeoutText] = useState('');
  const [tags, setTags] = useState('');
  const [priority, setPriority] = useState('');
  const [globs, setGlobs] = useState('');
  const [image, setImage] = useState('');
  const [env, setEnv] = useState('');
  const [earlierEnv, setEarlierEnv] = useState<string[]>([]);
  const [terminal, setTerminal] = useState(true);
  const [upload, setUpload] = useState<Upload>({ state: 'none' });
  const [reuse, setReuse] = useState<{ fileUrl: string; jobId: string } | null>(null);
  const [dragging, setDragging] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [fieldError, setFieldError] = useState<{ command?: string; timeout?: string; priority?: string; env?: string }>(
    {},
  );
  const [busy, setBusy] = useState(false);
  const handle = useRef<UploadHandle | null>(null);
  const input = useRef<HTMLInputElement>(null);

  // "Edit and run": prefill from an earlier job (`?from=<jobId>`).
  useEffect(() => {
    const from = new URLSearchParams(location$.value.search).get('from');
    if (!from) return;
    api
      .job(from)
      .then((job) => {
        setCommand(job.command);
        setTimeoutText(String(job.timeout));
        setTags(job.tags.join(', '));
        if (job.priority) setPriority(String(job.priority));
        setGlobs(job.artifactPatterns.join(' '));
        setImage(job.image ?? '');
        setTerminal(job.ttySize !== null);
        setEarlierEnv(job.envKeys);
        if (job.fileUrl) setReuse({ fileUrl: job.fileUrl, jobId: job.jobId });
      })
      .catch(() => setError('Could not load the job to copy'));
  }, []);

  useEffect(() => () => handle.current?.abort(), []);

  const pick = (file: File | undefined) => {
    if (!file) return;
    handle.current?.abort();
    setReuse(null);
    if (!/\.zip$/i.test(file.name)) {
      setUpload({ state: 'error', name: file.name, message: 'Choose a .zip file' });
      return;
    }
    setUpload({ state: 'uploading', name: file.name, loaded: 0, total: file.size });
    const h = uploadFile(file, (loaded, total) =>
      setUpload({ state: 'uploading', name: file.name, loaded, total }),
    );
    handle.current = h;
    h.promise.then(
      (f) => {
        if (handle.current === h) setUpload({ state: 'done', file: f });
      },
      (err: unknown) => {
        if (handle.current !== h) return;
        if (err instanceof ApiError && err.code === 'aborted') setUpload({ state: 'none' });
        else setUpload({ state: 'error', name: file.name, message: err instanceof Error ? err.message : 'Upload failed' });
      },
    );
  };

  const clearFile = () => {
    handle.current?.abort();
    handle.current = null;
    setUpload({ state: 'none' });
    setReuse(null);
    if (input.current) input.current.value = '';
  };

  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    setDragging(false);
    pick(e.dataTransfer?.files?.[0]);
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const errs: { command?: string; timeout?: string; priority?: string; env?: string } = {};
    if (!command.trim()) errs.command = 'Enter a command to run';
    const t = parseTimeout(timeout);
    if ('error' in t) errs.timeout = t.error;
    const p = parsePriority(priority);
    if ('error' in p) errs.priority = p.error;
    const vars = parseEnv(env);
    if ('error' in vars) errs.env = vars.error;
    setFieldError(errs);
    if (errs.command || errs.timeout || errs.priority || errs.env) return;
    if (upload.state === 'uploading') return;
    const req: SubmitRequest = { command };
    if (upload.state === 'done') req.fileId = upload.file.fileId;
    else if (reuse) req.fileUrl = reuse.fileUrl;
    if ('value' in t && t.value !== null) req.timeout = t.value;
    if ('value' in p && p.value !== null) req.priority = p.value;
    const tagList = parseTags(tags);
    if (tagList.length > 0) req.tags = tagList;
    const globList = parseGlobs(globs);
    if (globList.length > 0) req.artifacts = globList;
    if (image.trim()) req.image = image.trim();
    if ('value' in vars && Object.keys(vars.value).length > 0) req.env = vars.value;
    if (!terminal) req.tty = false;
    setBusy(true);
    try {
      const res = await api.submit(req);
      navigate(jobPath(res.jobId));
    } catch (err) {
      setError(err instanceof Error ? err.message : 'Could not submit the job');
      setBusy(false);
    }
  };

  const pct =
    upload.state === 'uploading' && upload.total > 0 ? Math.round((upload.loaded / upload.total) * 100) : 0;

  return (
    <>
      <PageHeader title="New job" />
      <form class="card form-card" onSubmit={submit} noValidate>
        <div class="field">
          <span class="label" id="zip-label">
            Project ZIP <span class="muted">(optional)</span>
          </span>
          <div
            class={`dropzone${dragging ? ' dragging' : ''}`}
            onDragOver={(e) => {
              e.preventDefault();
              setDragging(true);
            }}
            onDragLeave={() => setDragging(false)}
            onDrop={onDrop}
          >
            <input
              ref={input}
              id="zip-input"
              class="visually-hidden"
              type="file"
              accept=".zip,application/zip"
              aria-labelledby="zip-label"
              onChange={(e) => pick(e.currentTarget.files?.[0])}
            />
            {upload.state === 'none' && !reuse && (
              <p>
                Drag a ZIP here or{' '}
                <button type="button" class="btn-link" onClick={() => input.current?.click()}>
                  choose a file
                </button>
                . The command runs in its extracted folder.
              </p>
            )}
            {upload.state === 'none' && reuse && (
              <p>
                Using the ZIP of job <code>{shortId(reuse.jobId)}</code>.{' '}
                <button type="button" class="btn-link" onClick={clearFile}>
                  Remove
                </button>
              </p>
            )}
            {upload.state === 'uploading' && (
              <div class="upload">
                <div class="upload-row">
                  <span class="mono">{upload.name}</span>
                  <span>
                    {formatBytes(upload.loaded)} / {formatBytes(upload.total)}
                  </span>
                </div>
                <progress max={100} value={pct} aria-label="Upload progress">
                  {pct}%
                </progress>
                <button type="button" class="btn btn-small" onClick={clearFile}>
                  Cancel upload
                </button>
              </div>
            )}
            {upload.state === 'done' && (
              <div class="upload-row">
                <span>
                  <span class="ok">✓</span> <span class="mono">{upload.file.filename}</span>{' '}
                  <span class="muted">uploaded, {formatBytes(upload.file.size)}</span>
                </span>
                <button type="button" class="btn btn-small" onClick={clearFile}>
                  Remove
                </button>
              </div>
            )}
            {upload.state === 'error' && (
              <div class="upload">
                <div class="alert alert-error" role="alert">
                  {upload.name}: {upload.message}
                </div>
                <button type="button" class="btn btn-small" onClick={() => input.current?.click()}>
                  Choose another file
                </button>
              </div>
            )}
          </div>
        </div>
        <div class="field">
          <label for="job-command">Command</label>
          <textarea
            id="job-command"
            rows={5}
            spellcheck={false}
            placeholder={'make test\n# runs with sh -c in the extracted ZIP'}
            value={command}
            onInput={(e) => setCommand(e.currentTarget.value)}
            aria-invalid={fieldError.command ? true : undefined}
            aria-describedby={fieldError.command ? 'job-command-error' : undefined}
          />
          {fieldError.command && (
            <span id="job-command-error" class="field-error">
              {fieldError.command}
            </span>
          )}
        </div>
        <div class="field-row">
          <div class="field">
            <label for="job-timeout">Timeout (seconds)</label>
            <input
              id="job-timeout"
              inputMode="numeric"
              placeholder="600"
              value={timeout}
              onInput={(e) => setTimeoutText(e.currentTarget.value)}
              aria-invalid={fieldError.timeout ? true : undefined}
              aria-describedby={fieldError.timeout ? 'job-timeout-error' : undefined}
            />
            {fieldError.timeout && (
              <span id="job-timeout-error" class="field-error">
                {fieldError.timeout}
              </span>
            )}
          </div>
          <div class="field">
            <label for="job-tags">Tags</label>
            <input
              id="job-tags"
              placeholder="linux, gpu"
              value={tags}
              onInput={(e) => setTags(e.currentTarget.value)}
            />
            <span class="hint">Only workers with all these tags run the job.</span>
          </div>
          <div class="field">
            <label for="job-priority">Priority</label>
            <input
              id="job-priority"
              inputMode="numeric"
              placeholder="0"
              value={priority}
              onInput={(e) => setPriority(e.currentTarget.value)}
              aria-invalid={fieldError.priority ? true : undefined}
              aria-describedby={fieldError.priority ? 'job-priority-error' : 'job-priority-hint'}
            />
            {fieldError.priority ? (
              <span id="job-priority-error" class="field-error">
                {fieldError.priority}
              </span>
            ) : (
              <span id="job-priority-hint" class="hint">
                -100 to 100, higher first; users take turns within a priority.
              </span>
            )}
          </div>
        </div>
        <div class="field">
          <label for="job-image">
            Image <span class="muted">(optional)</span>
          </label>
          <input
            id="job-image"
            spellcheck={false}
            placeholder="python:3.11-slim"
            value={image}
            onInput={(e) => setImage(e.currentTarget.value)}
          />
          <span class="hint">
            An OCI image to run the command in (<code>registry/repository:tag</code>, or{' '}
            <code>@sha256:…</code> to pin), its folder at <code>/workspace</code>. Empty: the worker's own
            system.
          </span>
        </div>
        <div class="field">
          <label for="job-artifacts">Artifacts</label>
          <input
            id="job-artifacts"
            placeholder="dist/** reports/*.xml"
            value={globs}
            onInput={(e) => setGlobs(e.currentTarget.value)}
          />
          <span class="hint">
            Files to keep when the job ends, as globs relative to its folder, separated by spaces: <code>*</code>{' '}
            stays in one folder, <code>**</code> crosses folders.
          </span>
        </div>
        <div class="field">
          <label for="job-env">
            Environment <span class="muted">(optional)</span>
          </label>
          <textarea
            id="job-env"
            rows={3}
            spellcheck={false}
            autoComplete="off"
            placeholder={'API_URL=https://example.com\nTOKEN=…'}
            value={env}
            onInput={(e) => setEnv(e.currentTarget.value)}
            aria-invalid={fieldError.env ? true : undefined}
            aria-describedby={fieldError.env ? 'job-env-error' : 'job-env-hint'}
          />
          {fieldError.env ? (
            <span id="job-env-error" class="field-error">
              {fieldError.env}
            </span>
          ) : (
            <span id="job-env-hint" class="hint">
              One <code>NAME=value</code> per line. Values are kept by the hub for the job and never shown
              again, here or on the job's page.
              {earlierEnv.length > 0 &&
                ` The job this copies set ${earlierEnv.join(', ')}: enter their values again, or use Run again on its page to reuse them.`}
            </span>
          )}
        </div>
        <div class="field">
          <label class="check">
            <input
              type="checkbox"
              checked={terminal}
              aria-describedby="job-tty-hint"
              onChange={(e) => setTerminal(e.currentTarget.checked)}
            />{' '}
            Run in a terminal
          </label>
          <span id="job-tty-hint" class="hint">
            Tools print colours and progress bars, and stdout and stderr arrive as one ordered stream. Unticked:
            stdout and stderr on pipes of their own.
          </span>
        </div>
        <ErrorBanner error={error} />
        <div class="form-actions">
          <button type="submit" class="btn btn-primary" disabled={busy || upload.state === 'uploading'}>
            {busy ? 'Starting…' : upload.state === 'uploading' ? 'Uploading…' : 'Run'}
          </button>
        </div>
      </form>
    </>
  );
}
