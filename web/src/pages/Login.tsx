/** Log in as a PostgreSQL role: the console then queries the database as that role. */
import { useState } from 'preact/hooks';
import { ApiError, post, type SessionInfo } from '../api';

export function LoginPage({ onLogin }: { onLogin: (s: SessionInfo) => void }): preact.JSX.Element {
  const [role, setRole] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      const s = await post<SessionInfo>('/api/login', { role, password });
      setPassword('');
      onLogin(s);
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'the console cannot be reached');
      setPassword('');
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" class="login">
      <form class="card narrow" onSubmit={(e) => void submit(e)} aria-labelledby="login-title">
        <h1 id="login-title">
          <img src="/assets/favicon.svg" alt="" width="28" height="28" /> dfgate console
        </h1>
        <p class="muted">
          Log in with a PostgreSQL role and its password. You see and act on exactly what this role
          may see in the database.
        </p>
        <label for="role">Role</label>
        <input
          id="role"
          name="username"
          autocomplete="username"
          required
          value={role}
          onInput={(e) => setRole((e.target as HTMLInputElement).value)}
        />
        <label for="password">Password</label>
        <input
          id="password"
          name="password"
          type="password"
          autocomplete="current-password"
          value={password}
          onInput={(e) => setPassword((e.target as HTMLInputElement).value)}
        />
        <div role="alert" class="error" data-testid="login-error">
          {error}
        </div>
        <button type="submit" disabled={busy}>
          {busy ? 'Logging in…' : 'Log in'}
        </button>
      </form>
    </main>
  );
}
