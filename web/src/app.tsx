import { useEffect } from 'preact/hooks';
import { EmptyState, Layout, PageHeader } from './components/Layout';
import { Link } from './components/Link';
import { parseRoute } from './lib/routes';
import { Admin } from './pages/Admin';
import { JobPage } from './pages/JobPage';
import { Jobs } from './pages/Jobs';
import { Login } from './pages/Login';
import { NewJob } from './pages/NewJob';
import { Workers } from './pages/Workers';
import { currentUser, location$, navigate } from './state';

const TITLES: Record<string, string> = {
  jobs: 'Jobs',
  newJob: 'New job',
  job: 'Job',
  workers: 'Workers',
  admin: 'Admin',
  login: 'Sign in',
  notFound: 'Not found',
};

export function App() {
  const user = currentUser.value;
  const loc = location$.value;
  const route = parseRoute(loc.pathname);

  useEffect(() => {
    document.title = `${route.page === 'job' ? `Job ${route.jobId.slice(-8)}` : TITLES[route.page]} · cmdx`;
  }, [loc.pathname]);

  // Signed out: every page but the sign-in form redirects there, remembering where to go back.
  useEffect(() => {
    if (user === null && route.page !== 'login') {
      navigate(`/login?next=${encodeURIComponent(loc.pathname + loc.search)}`, { replace: true });
    } else if (user && route.page === 'login') {
      navigate('/jobs', { replace: true });
    }
  }, [user, route.page]);

  if (user === undefined) {
    return (
      <div class="boot" role="status">
        Loading…
      </div>
    );
  }
  if (user === null || route.page === 'login') return <Login />;

  let page;
  switch (route.page) {
    case 'jobs':
      page = <Jobs />;
      break;
    case 'newJob':
      page = <NewJob />;
      break;
    case 'job':
      page = <JobPage key={route.jobId} jobId={route.jobId} />;
      break;
    case 'workers':
      page = <Workers />;
      break;
    case 'admin':
      page =
        user.role === 'admin' ? (
          <Admin />
        ) : (
          <>
            <PageHeader title="Admin" />
            <EmptyState title="Admins only">Ask an admin for access.</EmptyState>
          </>
        );
      break;
    default:
      page = (
        <>
          <PageHeader title="Page not found" />
          <EmptyState title="Nothing here">
            <Link href="/jobs">Go to jobs</Link>
          </EmptyState>
        </>
      );
  }
  return <Layout>{page}</Layout>;
}
