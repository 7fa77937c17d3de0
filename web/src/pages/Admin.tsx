import { useEffect, useState } from 'preact/hooks';
import { api } from '../api';
import { ErrorBanner, PageHeader } from '../components/Layout';
import { formatTime } from '../lib/format';
import type { MintTokenResponse, UserView } from '../types';

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
      {done && (
        <div class="alert alert-ok" role="status">
          {done}
        </div>
      )}
      <ErrorBanner error={listError} />
      {users && (
        <div class="table-wrap">
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Email</th>
                <th scope="col">Role</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {users.map((u) => (
                <tr key={u.id}>
                  <td>{u.email}</td>
                  <td>{u.role}</td>
                  <td>{formatTime(u.createdAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
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

function Tokens() {
  const [name, setName] = useState('');
  const [days, setDays] = useState('30');
  const [minted, setMinted] = useState<MintTokenResponse | null>(null);
  const [copied, setCopied] = useState<'yes' | 'no' | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const mint = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setCopied(null);
    const d = days.trim() ? Number(days) : NaN;
    if (days.trim() && (!Number.isFinite(d) || d <= 0)) return setError('Lifetime must be a positive number of days');
    setBusy(true);
    try {
      setMinted(await api.mintToken(name.trim() || undefined, Number.isFinite(d) ? Math.round(d * 86400) : undefined));
    } catch (err) {
      setError(err instanceof Error ? err.message : 'Could not mint a token');
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="card" aria-labelledby="tokens-title">
      <h2 id="tokens-title">Worker tokens</h2>
      <p class="muted">A worker token lets agents join this hub: <code>cmdx agent --hub URL --token TOKEN</code>.</p>
      <form class="inline-form" onSubmit={mint} noValidate>
        <div class="field">
          <label for="token-name">Token name</label>
          <input id="token-name" placeholder="build-farm" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="token-days">Lifetime (days)</label>
          <input id="token-days" inputMode="numeric" value={days} onInput={(e) => setDays(e.currentTarget.value)} />
        </div>
        <button type="submit" class="btn btn-primary" disabled={busy}>
          Mint token
        </button>
      </form>
      <ErrorBanner error={error} />
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
    </section>
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
