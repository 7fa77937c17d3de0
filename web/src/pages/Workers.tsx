import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from '../api';
import { DoneBanner, EmptyState, ErrorBanner, PageHeader } from '../components/Layout';
import { Link } from '../components/Link';
import { useNow } from '../components/useNow';
import { formatBytes, formatRelative, shortId } from '../lib/format';
import { jobPath } from '../lib/routes';
import { compareWorkers, upsertWorker } from '../lib/workers';
import { currentUser } from '../state';
import type { WorkerView } from '../types';
import { hubSocket } from '../ws';

export function Workers() {
  const [workers, setWorkers] = useState<WorkerView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const now = useNow(1000);
  const isAdmin = currentUser.value?.role === 'admin';
  const reload = useRef<() => void>(() => {});
  const acted = (result: { done: string } | { error: string }) => {
    if ('done' in result) {
      setDone(result.done);
      setError(null);
    } else {
      setError(result.error);
      setDone(null);
    }
    reload.current();
  };

  useEffect(() => {
    // On a cluster of hubs (workers carry the hub holding them), the live feed carries this
    // hub's workers only: the list is reread every 10 s for the rest.
    let clustered = false;
    const load = () =>
      api.workers().then(
        (r) => {
          clustered = r.workers.some((w) => w.hub);
          setWorkers(r.workers.slice().sort(compareWorkers));
          setError(null);
        },
        (err: unknown) => setError(err instanceof Error ? err.message : 'Could not load workers'),
      );
    reload.current = () => void load();
    void load();
    const offWorker = hubSocket.onWorker((w) => setWorkers((prev) => upsertWorker(prev ?? [], w)));
    const offOpen = hubSocket.onOpen(() => void load());
    const every = window.setInterval(() => {
      if (clustered) void load();
    }, 10_000);
    return () => {
      offWorker();
      offOpen();
      window.clearInterval(every);
    };
  }, []);

  const online = workers?.filter((w) => w.status === 'online').length ?? 0;
  const draining = workers?.filter((w) => w.status === 'draining').length ?? 0;
  const slots = workers?.filter((w) => w.status === 'online').reduce((n, w) => n + w.slots, 0) ?? 0;
  const used = workers?.filter((w) => w.status === 'online').reduce((n, w) => n + w.slotsUsed, 0) ?? 0;

  return (
    <>
      <PageHeader title="Workers">
        {workers && (
          <span class="muted">
            {online} online{draining > 0 && ` · ${draining} draining`} · {used} of {slots} slots busy
          </span>
        )}
      </PageHeader>
      <ErrorBanner error={error} />
      <DoneBanner message={done} />
      {workers === null && !error && <p class="muted" role="status">Loading workers…</p>}
      {workers !== null && workers.length === 0 && (
        <EmptyState title="No workers connected">
          Start one with <code>CMDX_AGENT_TOKEN=… cmdx agent --hub {location.origin}</code> (the token in the
          environment or a <code>--token-file</code>, never on the command line); an admin mints tokens on
          the Admin page.
        </EmptyState>
      )}
      {workers !== null && workers.length > 0 && (
        <div class="table-wrap">
          <table class="table workers-table">
            <thead>
              <tr>
                <th scope="col">Hostname</th>
                <th scope="col">Status</th>
                <th scope="col">Slots in use</th>
                <th scope="col">Current jobs</th>
                <th scope="col" class="hide-narrow">CPUs</th>
                <th scope="col" class="hide-narrow">Memory</th>
                <th scope="col" class="hide-narrow">Isolation</th>
                <th scope="col">Last heartbeat</th>
                {isAdmin && (
                  <th scope="col">
                    <span class="visually-hidden">Actions</span>
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {workers.map((w) => (
                <tr key={w.workerId} data-worker-id={w.workerId}>
                  <td>
                    <div class="strong">{w.hostname || '—'}</div>
                    <div class="muted small mono" title={w.workerId}>
                      {w.workerId} · {w.kind} {w.version && `· v${w.version}`}
                      {w.tags.length > 0 && ` · ${w.tags.join(', ')}`}
                      {w.hub && ` · on hub ${w.hub}`}
                    </div>
                  </td>
                  <td>
                    <span class={`badge badge-worker-${w.status}`}>{w.status}</span>
                    {w.drainedBy && (
                      <div class="muted small drained" title={w.drainedAt ?? ''}>
                        drained by {w.drainedBy} {formatRelative(w.drainedAt ?? null, now)}
                      </div>
                    )}
                  </td>
                  <td>
                    <div class="slots" title={`${w.slotsUsed} of ${w.slots}`}>
                      <span>
                        {w.slotsUsed} / {w.slots}
                      </span>
                      <span class="meter" aria-hidden="true">
                        <span style={{ width: `${w.slots ? Math.min(100, (w.slotsUsed / w.slots) * 100) : 0}%` }} />
                      </span>
                    </div>
                  </td>
                  <td>
                    {w.currentJobs.length === 0 ? (
                      <span class="muted">idle</span>
                    ) : (
                      w.currentJobs.map((id) => (
                        <Link href={jobPath(id)} class="mono chip">
                          {shortId(id)}
                        </Link>
                      ))
                    )}
                  </td>
                  <td class="hide-narrow">{w.cpuCount}</td>
                  <td class="hide-narrow">{formatBytes(w.totalMemoryMb * 1024 * 1024)}</td>
                  <td class="hide-narrow">
                    <div class="chips">
                      {w.isolation.active.map((l) => (
                        <span class="chip chip-ok">{l}</span>
                      ))}
                      {w.isolation.missing.map((l) => (
                        <span class="chip chip-missing" title="not available on this host">
                          no {l}
                        </span>
                      ))}
                      {w.isolation.mode && <span class="muted small">{w.isolation.mode}</span>}
                    </div>
                  </td>
                  <td title={w.lastHeartbeat ?? ''}>{formatRelative(w.lastHeartbeat, now)}</td>
                  {isAdmin && (
                    <td>
                      <WorkerActions worker={w} onDone={acted} />
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

/** An admin's actions on one worker: drain or resume it, or remove it after asking once. */
function WorkerActions({
  worker: w,
  onDone,
}: {
  worker: WorkerView;
  onDone: (result: { done: string } | { error: string }) => void;
}) {
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  const act = async (what: () => Promise<unknown>, done: string) => {
    setBusy(true);
    try {
      await what();
      onDone({ done });
    } catch (err) {
      onDone({ error: err instanceof Error ? err.message : 'The change failed' });
    } finally {
      setBusy(false);
      setAsking(false);
    }
  };
  const id = w.workerId;
  if (asking) {
    return (
      <div class="inline-form" role="group" aria-label={`Remove ${id}?`}>
        <span class="small">
          {w.currentJobs.length ? 'Its running jobs go back to the queue now.' : 'It can enrol again by reconnecting.'}
        </span>
        <button
          type="button"
          class="btn btn-small btn-danger"
          disabled={busy}
          onClick={() => void act(() => api.removeWorker(id), `${id} removed; its jobs, if any, are queued again`)}
        >
          Remove {id}
        </button>
        <button type="button" class="btn btn-small" onClick={() => setAsking(false)}>
          Keep it
        </button>
      </div>
    );
  }
  return (
    <div class="inline-form">
      {w.drainedBy ? (
        <button
          type="button"
          class="btn btn-small"
          disabled={busy}
          title="It takes jobs again"
          onClick={() => void act(() => api.resumeWorker(id), `${id} takes jobs again`)}
        >
          Resume<span class="visually-hidden"> {id}</span>
        </button>
      ) : (
        <button
          type="button"
          class="btn btn-small"
          disabled={busy}
          title="It takes no new jobs and finishes its running ones, across restarts, until resumed"
          onClick={() =>
            void act(
              () => api.drainWorker(id),
              `${id} is drained: it takes no new jobs and finishes its running ones, until you resume it`,
            )
          }
        >
          Drain<span class="visually-hidden"> {id}</span>
        </button>
      )}
      <button type="button" class="btn btn-small" onClick={() => setAsking(true)}>
        Remove<span class="visually-hidden"> {id}</span>
      </button>
    </div>
  );
}
