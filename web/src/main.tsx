/** The dfgate web console: session, routing (history API) and the page frame. */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { closeEvents, get, post, setCsrf, setOnUnauthorized, type SessionInfo } from './api';
import { InstancePage } from './pages/Instance';
import { InstancesPage } from './pages/Instances';
import { LoginPage } from './pages/Login';
import { OverviewPage } from './pages/Overview';
import { StartPage } from './pages/Start';
import { Link, navigate, onPath } from './router';
import './style.css';

function NoAccess({ role }: { role: string }): preact.JSX.Element {
  return (
    <section class="card narrow" aria-labelledby="noaccess">
      <h1 id="noaccess">No access to workflows</h1>
      <p>
        You are logged in as <strong>{role}</strong>, but this role may not use dfgate workflows
        yet. An administrator can allow it with:
      </p>
      <pre class="code">SELECT df.grant_usage('{role}');</pre>
      <p>Then log out and in again.</p>
    </section>
  );
}

function NotFound(): preact.JSX.Element {
  return (
    <section class="card narrow" aria-labelledby="nf">
      <h1 id="nf">Not found</h1>
      <p>There is no such page, or no instance with this id that you may see.</p>
      <p>
        <Link href="/instances">Back to the instances</Link>
      </p>
    </section>
  );
}

function App(): preact.JSX.Element {
  const [path, setP] = useState(location.pathname + location.search);
  const [session, setSession] = useState<SessionInfo | null | undefined>(undefined);
  onPath(setP);

  useEffect(() => {
    const onPop = (): void => setP(location.pathname + location.search);
    addEventListener('popstate', onPop);
    setOnUnauthorized(() => {
      closeEvents();
      setSession(null);
    });
    get<SessionInfo>('/api/session').then(
      (s) => {
        setCsrf(s.csrf);
        setSession(s);
      },
      () => setSession(null),
    );
    return () => removeEventListener('popstate', onPop);
  }, []);

  useEffect(() => {
    const title = path.startsWith('/instances/')
      ? `Instance ${path.split('/')[2] ?? ''}`
      : path.startsWith('/start')
        ? 'Start a workflow'
        : path.startsWith('/overview')
          ? 'Overview'
          : session === null
            ? 'Log in'
            : 'Instances';
    document.title = `${title} · dfgate console`;
  }, [path, session]);

  if (session === undefined) return <p class="loading">Loading…</p>;
  if (session === null)
    return (
      <LoginPage
        onLogin={(s) => {
          setCsrf(s.csrf);
          setSession(s);
          if (location.pathname === '/' || location.pathname === '/login') navigate('/instances');
        }}
      />
    );

  const logout = async (): Promise<void> => {
    try {
      await post('/api/logout', {});
    } finally {
      closeEvents();
      setSession(null);
      navigate('/login');
    }
  };
  const pathname = path.split('?')[0] ?? '/';
  const section = pathname.startsWith('/start')
    ? 'start'
    : pathname.startsWith('/overview')
      ? 'overview'
      : 'instances';
  let page: preact.JSX.Element;
  const m = /^\/instances\/([^/]+)$/.exec(pathname);
  if (!session.usage) page = <NoAccess role={session.role} />;
  else if (pathname === '/' || pathname === '/login' || pathname === '/instances')
    page = <InstancesPage query={path.split('?')[1] ?? ''} />;
  else if (m) page = <InstancePage id={decodeURIComponent(m[1] ?? '')} />;
  else if (pathname === '/start') page = <StartPage />;
  else if (pathname === '/overview') page = <OverviewPage />;
  else page = <NotFound />;

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <div class="brand">
          <img src="/assets/favicon.svg" alt="" width="22" height="22" /> dfgate
        </div>
        <nav aria-label="Main">
          <Link href="/instances" aria-current={section === 'instances' ? 'page' : undefined}>
            Instances
          </Link>
          <Link href="/start" aria-current={section === 'start' ? 'page' : undefined}>
            Start
          </Link>
          <Link href="/overview" aria-current={section === 'overview' ? 'page' : undefined}>
            Overview
          </Link>
        </nav>
        <div class="who">
          <span>
            Role <strong data-testid="role">{session.role}</strong>
          </span>
          <button type="button" class="secondary" onClick={() => void logout()}>
            Log out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app') as HTMLElement);
