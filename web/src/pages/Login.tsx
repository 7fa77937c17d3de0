import { useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { nextPath } from '../lib/routes';
import { location$, navigate, signedIn } from '../state';

export function Login() {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    if (!email.trim() || !password) {
      setError('Enter your email and password');
      return;
    }
    setBusy(true);
    try {
      const res = await api.login(email.trim(), password);
      signedIn(res.user);
      navigate(nextPath(location$.value.search), { replace: true });
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 400)) {
        setError('Wrong email or password');
      } else {
        setError(err instanceof Error ? err.message : 'Sign in failed');
      }
      setBusy(false);
    }
  };

  return (
    <div class="login-wrap">
      <form class="card login-card" onSubmit={submit} noValidate aria-labelledby="login-title">
        <div class="login-brand">
          <span class="brand-mark">›_</span> cmdx
        </div>
        <h1 id="login-title">Sign in</h1>
        <p class="muted">Run commands on the cluster and watch them live.</p>
        <div class="field">
          <label for="login-email">Email</label>
          <input
            id="login-email"
            type="email"
            autoComplete="username"
            value={email}
            onInput={(e) => setEmail(e.currentTarget.value)}
            autoFocus
          />
        </div>
        <div class="field">
          <label for="login-password">Password</label>
          <input
            id="login-password"
            type="password"
            autoComplete="current-password"
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </div>
        {error && (
          <div class="alert alert-error" role="alert">
            {error}
          </div>
        )}
        <button type="submit" class="btn btn-primary btn-block" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </div>
  );
}
