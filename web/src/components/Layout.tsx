import type { ComponentChildren } from 'preact';
import { currentUser, location$, signOut } from '../state';
import { socketState } from '../ws';
import { Link } from './Link';

function NavLink({ href, label, match }: { href: string; label: string; match: (p: string) => boolean }) {
  const active = match(location$.value.pathname);
  return (
    <Link href={href} class={active ? 'nav-link active' : 'nav-link'} aria-current={active ? 'page' : undefined}>
      {label}
    </Link>
  );
}

const SOCKET_LABELS = { idle: '', connecting: 'Connecting…', live: 'Live', offline: 'Reconnecting…' };

export function Layout({ children }: { children: ComponentChildren }) {
  const user = currentUser.value;
  const state = socketState.value;
  return (
    <div class="app">
      <header class="topbar">
        <Link href="/jobs" class="brand" aria-label="cmdx home">
          <span class="brand-mark">›_</span> cmdx
        </Link>
        <nav class="nav" aria-label="Main">
          <NavLink
            href="/jobs"
            label="Jobs"
            match={(p) => p === '/' || (p.startsWith('/jobs') && p !== '/jobs/new')}
          />
          <NavLink href="/jobs/new" label="New job" match={(p) => p === '/jobs/new'} />
          <NavLink href="/workers" label="Workers" match={(p) => p === '/workers'} />
          {user?.role === 'admin' && <NavLink href="/admin" label="Admin" match={(p) => p === '/admin'} />}
        </nav>
        <div class="topbar-right">
          {state !== 'idle' && (
            <span class={`live live-${state}`} title="Connection for live updates" role="status">
              <span class="live-dot" aria-hidden="true" />
              {SOCKET_LABELS[state]}
            </span>
          )}
          {user && (
            <span class="user" title={user.role}>
              {user.email}
            </span>
          )}
          {user && (
            <button type="button" class="btn btn-ghost" onClick={() => void signOut()}>
              Sign out
            </button>
          )}
        </div>
      </header>
      <main class="main">{children}</main>
    </div>
  );
}

/** Heading row of a page, with optional actions on the right. */
export function PageHeader({ title, children }: { title: ComponentChildren; children?: ComponentChildren }) {
  return (
    <div class="page-header">
      <h1>{title}</h1>
      {children && <div class="page-actions">{children}</div>}
    </div>
  );
}

export function ErrorBanner({ error }: { error: string | null | undefined }) {
  if (!error) return null;
  return (
    <div class="alert alert-error" role="alert">
      {error}
    </div>
  );
}

/** What an action did, announced politely (nothing when `message` is empty). */
export function DoneBanner({ message }: { message: string | null | undefined }) {
  if (!message) return null;
  return (
    <div class="alert alert-ok" role="status">
      {message}
    </div>
  );
}

export function EmptyState({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <p class="empty-title">{title}</p>
      {children && <div class="empty-body">{children}</div>}
    </div>
  );
}
