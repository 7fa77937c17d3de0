import { useEffect, useState } from 'preact/hooks';
import { api } from '../api';
import { DoneBanner, ErrorBanner, PageHeader } from '../components/Layout';
import { formatTime, parseTags } from '../lib/format';
import type { MintTokenResponse, UserView, WorkerTokenView } from '../types';

function Users() {
  const [users, setUsers] = useState<UserView[] | null>(null);
  const [listError, setListError] = useState<string | null>(null);
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState('user');
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const load = () =>
    api.users().then(
      (r) => setUsers(r.users),
      (err: unknown) => setListError(err instanceof Error ? err.message : 'Could not load users'),
    );
  useEffect(() => void load(), []);

  const add = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setDone(null);
    if (!email.trim()) return setError('Enter an email');
    if (password.length < 8) return setError('The password needs at least 8 characters');
    setBusy(true);
    try {
      const added = email.trim();
      await api.register(added, password, role);
      setDone(`Added ${added}`);
      setEmail('');
      setPassword('');
      setRole('user');
      void load();
    } catch (err) {
      setError(err instanceof Error ? err.message : 'Could not add the user');
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="card" aria-labelledby="users-title">
      <h2 id="users-title">Users</h2>
      <form class="inline-form" onSubmit={add} noValidate>
        <div class="field">
          <label for="user-email">New user email</label>
          <input id="user-email" type="email" autoComplete="off" value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="user-password">New user password</label>
          <input
            id="user-password"
            type="password"
            autoComplete="new-password"
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </div>
        <div class="field">
          <label for="user-role">Role</label>
          <select id="user-role" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
            <option value="user">user</option>
            <option value="admin">admin</option>
          </select>
        </div>
        <button type="submit" class="btn btn-primary" disabled={busy}>
          Add user
        </button>
      </form>
      <ErrorBanner error={error} />
      <DoneBanner message={done} />
      <ErrorBanner error={listError} />
      {users && (
        <div class="table-wrap">
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Email</th>
                <th scope="col">Role</th>
                <th scope="col">State</th>
                <th scope="col">Quotas</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {users.map((u) => (
                <UserRow
                  key={u.id}
                  user={u}
                  onChanged={(message) => {
                    setDone(message);
                    void load();
                  }}
                />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

/** A quota as shown: the user's own, or the hub's. */
function quotaText(v: number | undefined): string {
  if (v === undefined) return 'hub default';
  return v === 0 ? 'no limit' : String(v);
}

/** A quota typed in: empty for the hub's, else a whole number (0: no limit). */
function parseQuota(s: string): { value: number | null } | { error: string } {
  const t = s.trim();
  if (!t) return { value: null };
  if (!/^\d+$/.test(t)) return { error: 'Quotas are whole numbers (0: no limit), or empty for the hub default' };
  return { value: Number(t) };
}

/** One account, with what an admin can do to it behind a Manage disclosure. */
function UserRow({ user: u, onChanged }: { user: UserView; onChanged: (message: string) => void }) {
  const [role, setRole] = useState(u.role);
  const [password, setPassword] = useState('');
  const [queued, setQueued] = useState(u.maxQueued === undefined ? '' : String(u.maxQueued));
  const [running, setRunning] = useState(u.maxRunning === undefined ? '' : String(u.maxRunning));
  const [jobs, setJobs] = useState<'keep' | 'remove' | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const id = `user-${u.id}`;

  const act = async (what: () => Promise<string>) => {
    setError(null);
    setBusy(true);
    try {
      onChanged(await what());
    } catch (err) {
      setError(err instanceof Error ? err.message : 'The change failed');
    } finally {
      setBusy(false);
    }
  };

  const saveQuotas = () => {
    const q = parseQuota(queued);
    const r = parseQuota(running);
    if ('error' in q) return setError(q.error);
    if ('error' in r) return setError(r.error);
    void act(async () => {
      await api.setQuota(u.id, q.value, r.value);
      return `Quotas of ${u.email} saved`;
    });
  };

  return (
    <tr>
      <td>{u.email}</td>
      <td>{u.role}</td>
      <td>{u.disabled ? <span class="badge" data-status="cancelled">disabled</span> : 'active'}</td>
      <td class="small">
        queued {quotaText(u.maxQueued)}, running {quotaText(u.maxRunning)}
      </td>
      <td>{formatTime(u.createdAt)}</td>
      <td>
        <details class="manage">
          <summary>
            Manage<span class="visually-hidden"> {u.email}</span>
          </summary>
          <div class="manage-panel" role="group" aria-label={`Manage ${u.email}`}>
            <div class="inline-form">
              <button
                type="button"
                class="btn btn-small"
                disabled={busy}
                onClick={() =>
                  void act(async () => {
                    await api.updateUser(u.id, { disabled: !u.disabled });
                    return u.disabled ? `${u.email} enabled` : `${u.email} disabled: their sessions ended`;
                  })
                }
              >
                {u.disabled ? 'Enable' : 'Disable'}
              </button>
              <div class="field">
                <label for={`${id}-role`}>Role</label>
                <select id={`${id}-role`} value={role} onChange={(e) => setRole(e.currentTarget.value)}>
                  <option value="user">user</option>
                  <option value="admin">admin</option>
                </select>
              </div>
              <button
                type="button"
                class="btn btn-small"
                disabled={busy || role === u.role}
                onClick={() =>
                  void act(async () => {
                    await api.updateUser(u.id, { role });
                    return `${u.email} is now ${role}: their sessions ended`;
                  })
                }
              >
                Save role
              </button>
            </div>
            <div class="inline-form">
              <div class="field">
                <label for={`${id}-password`}>New password</label>
                <input
                  id={`${id}-password`}
                  type="password"
                  autoComplete="new-password"
                  value={password}
                  onInput={(e) => setPassword(e.currentTarget.value)}
                />
              </div>
              <button
                type="button"
                class="btn btn-small"
                disabled={busy}
                onClick={() => {
                  if (password.length < 8) return setError('The password needs at least 8 characters');
                  void act(async () => {
                    await api.updateUser(u.id, { password });
                    setPassword('');
                    return `${u.email} has a new password: their sessions ended`;
                  });
                }}
              >
                Set password
              </button>
            </div>
            <div class="inline-form">
              <div class="field">
                <label for={`${id}-queued`}>Max queued jobs</label>
                <input
                  id={`${id}-queued`}
                  inputMode="numeric"
                  placeholder="hub default"
                  value={queued}
                  onInput={(e) => setQueued(e.currentTarget.value)}
                />
              </div>
              <div class="field">
                <label for={`${id}-running`}>Max running jobs</label>
                <input
                  id={`${id}-running`}
                  inputMode="numeric"
                  placeholder="hub default"
                  value={running}
                  onInput={(e) => setRunning(e.currentTarget.value)}
                />
              </div>
              <button type="button" class="btn btn-small" disabled={busy} onClick={saveQuotas}>
                Save quotas
              </button>
            </div>
            <fieldset class="inline-form">
              <legend>Delete the account and</legend>
              <label>
                <input type="radio" name={`${id}-jobs`} checked={jobs === 'keep'} onChange={() => setJobs('keep')} /> keep
                their jobs
              </label>
              <label>
                <input type="radio" name={`${id}-jobs`} checked={jobs === 'remove'} onChange={() => setJobs('remove')} />{' '}
                remove their jobs and files
              </label>
              <button
                type="button"
                class="btn btn-small btn-danger"
                disabled={busy || jobs === null}
                onClick={() =>
                  jobs &&
                  void act(async () => {
                    const r = await api.deleteUser(u.id, jobs);
                    return r.jobs === 'removed'
                      ? `${u.email} deleted with ${r.jobsRemoved} jobs and ${r.filesRemoved} files`
                      : `${u.email} deleted; their jobs are kept`;
                  })
                }
              >
                Delete {u.email}
              </button>
            </fieldset>
            <ErrorBanner error={error} />
          </div>
        </details>
      </td>
    </tr>
  );
}

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API needs a secure context; fall back to a selection copy.
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

/** How an agent gets its token: in its environment or a file, never on its command line
 * (where every user of the host can read it in `ps`). */
function AgentCommand() {
  return (
    <p class="muted">
      Start an agent with the token in its environment, not on its command line:{' '}
      <code>
        CMDX_AGENT_TOKEN=… cmdx agent --hub {location.origin}
      </code>{' '}
      (or <code>--token-file FILE</code>, a file of mode 0600).
    </p>
  );
}

/** A token's tag scope typed in; empty: any tags. */
function scope(text: string): string[] | undefined {
  const tags = parseTags(text);
  return tags.length ? tags : undefined;
}

function Tokens() {
  const [name, setName] = useState('');
  const [days, setDays] = useState('30');
  const [tags, setTags] = useState('');
  const [minted, setMinted] = useState<MintTokenResponse | null>(null);
  const [copied, setCopied] = useState<'yes' | 'no' | null>(null);
  const [tokens, setTokens] = useState<WorkerTokenView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const load = () =>
    api.tokens().then(
      (r) => setTokens(r.tokens),
      (err: unknown) => setError(err instanceof Error ? err.message : 'Could not load the tokens'),
    );
  useEffect(() => void load(), []);

  const mint = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setDone(null);
    setCopied(null);
    const d = days.trim() ? Number(days) : NaN;
    if (days.trim() && (!Number.isFinite(d) || d <= 0)) return setError('Lifetime must be a positive number of days');
    setBusy(true);
    try {
      setMinted(
        await api.mintToken(name.trim() || undefined, Number.isFinite(d) ? Math.round(d * 86400) : undefined, scope(tags)),
      );
      void load();
    } catch (err) {
      setError(err instanceof Error ? err.message : 'Could not mint a token');
    } finally {
      setBusy(false);
    }
  };

  const revoke = async (t: WorkerTokenView) => {
    setError(null);
    setDone(null);
    setBusy(true);
    try {
      const r = await api.revokeToken(t.tokenId);
      const n = r.closedSessions.length;
      setDone(`Token ${t.name ?? t.tokenId} revoked; ${n} agent session${n === 1 ? '' : 's'} closed`);
      if (minted?.tokenId === t.tokenId) setMinted(null);
    } catch (err) {
      setError(err instanceof Error ? err.message : 'Could not revoke the token');
    } finally {
      setBusy(false);
      void load();
    }
  };

  return (
    <section class="card" aria-labelledby="tokens-title">
      <h2 id="tokens-title">Worker tokens</h2>
      <AgentCommand />
      <form class="inline-form" onSubmit={mint} noValidate>
        <div class="field">
          <label for="token-name">Token name</label>
          <input id="token-name" placeholder="build-farm" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="token-days">Lifetime (days)</label>
          <input id="token-days" inputMode="numeric" value={days} onInput={(e) => setDays(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="token-tags">Only these tags</label>
          <input
            id="token-tags"
            placeholder="any tags"
            title="Agents with this token may advertise only these tags (spaces or commas between them)"
            value={tags}
            onInput={(e) => setTags(e.currentTarget.value)}
          />
        </div>
        <button type="submit" class="btn btn-primary" disabled={busy}>
          Mint token
        </button>
      </form>
      <ErrorBanner error={error} />
      <DoneBanner message={done} />
      {minted && (
        <div class="token-box" role="region" aria-label="Minted token">
          <p class="strong">Copy this token now: it is shown only once.</p>
          <div class="token-row">
            <input
              class="mono"
              readOnly
              value={minted.token}
              aria-label="Worker token"
              onFocus={(e) => e.currentTarget.select()}
            />
            <button
              type="button"
              class="btn btn-primary"
              onClick={async () => setCopied((await copyText(minted.token)) ? 'yes' : 'no')}
            >
              {copied === 'yes' ? 'Copied' : 'Copy'}
            </button>
          </div>
          <p class="muted small">
            Token id <span class="mono">{minted.tokenId}</span> · expires {formatTime(minted.expiresAt)}
            {copied === 'no' && ' · copy failed: select the text and copy it by hand'}
          </p>
          <button type="button" class="btn btn-small" onClick={() => setMinted(null)}>
            Done
          </button>
        </div>
      )}
      {tokens && tokens.length === 0 && <p class="muted">No live worker tokens.</p>}
      {tokens && tokens.length > 0 && (
        <div class="table-wrap">
          <table class="table">
            <caption class="visually-hidden">Live worker tokens</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Token id</th>
                <th scope="col">Tags</th>
                <th scope="col">Agents</th>
                <th scope="col">Expires</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {tokens.map((t) => (
                <TokenRow key={t.tokenId} token={t} busy={busy} onRevoke={() => void revoke(t)} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

/** One live token; revoking it asks once more, saying what it does to the agents using it. */
function TokenRow({ token: t, busy, onRevoke }: { token: WorkerTokenView; busy: boolean; onRevoke: () => void }) {
  const [asking, setAsking] = useState(false);
  const label = t.name ?? t.tokenId;
  return (
    <tr>
      <td>{t.name ?? <span class="muted">unnamed</span>}</td>
      <td class="mono small">{t.tokenId}</td>
      <td>{t.tags?.length ? t.tags.join(', ') : <span class="muted">any</span>}</td>
      <td class="mono small">{t.workers.length ? t.workers.join(', ') : <span class="muted">none</span>}</td>
      <td>{formatTime(t.expiresAt)}</td>
      <td>
        {asking ? (
          <div class="inline-form" role="group" aria-label={`Revoke ${label}?`}>
            <span class="small">
              {t.workers.length
                ? `Its ${t.workers.length} agent${t.workers.length === 1 ? ' is' : 's are'} disconnected now.`
                : 'Agents can no longer join with it.'}
            </span>
            <button type="button" class="btn btn-small btn-danger" disabled={busy} onClick={onRevoke}>
              Revoke {label}
            </button>
            <button type="button" class="btn btn-small" onClick={() => setAsking(false)}>
              Keep it
            </button>
          </div>
        ) : (
          <button type="button" class="btn btn-small" onClick={() => setAsking(true)}>
            Revoke<span class="visually-hidden"> {label}</span>
          </button>
        )}
      </td>
    </tr>
  );
}

export function Admin() {
  return (
    <>
      <PageHeader title="Admin" />
      <div class="stack">
        <Users />
        <Tokens />
      </div>
    </>
  );
}
