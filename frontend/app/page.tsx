'use client';

import { useEffect, useState, type FormEvent } from 'react';
import { useRouter } from 'next/navigation';
import { authenticate, getToken } from '@/lib/api';

export default function LoginPage() {
  const router = useRouter();
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (getToken()) router.replace('/chat');
  }, [router]);

  async function submit(mode: 'login' | 'register', e?: FormEvent) {
    e?.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await authenticate(mode, username, password);
      router.push('/chat');
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="login">
      <form onSubmit={(e) => submit('login', e)}>
        <h1>Chat</h1>
        <label>
          Username
          <input
            name="username"
            autoComplete="username"
            value={username}
            onChange={(e) => setUsername(e.target.value)}
            required
          />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete="current-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            required
          />
        </label>
        {error && <p className="error" role="alert">{error}</p>}
        <div className="row">
          <button type="submit" disabled={busy}>
            Log in
          </button>
          <button
            type="button"
            disabled={busy || !username || !password}
            onClick={() => submit('register')}
          >
            Register
          </button>
        </div>
      </form>
    </main>
  );
}
