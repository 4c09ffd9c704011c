// The sign-in prompt: remembers the token for this tab and opens the console with it.
import { base, rememberToken } from './api.js';

const form = document.getElementById('login');
const input = document.getElementById('token');
const error = document.getElementById('login-error');

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const t = input.value.trim();
  if (!t) return;
  error.hidden = true;
  const res = await fetch(`${base}/api/apps`, { headers: { Authorization: `Bearer ${t}` }, cache: 'no-store' });
  if (res.status === 401) {
    error.textContent = 'That token is not right.';
    error.hidden = false;
    input.select();
    return;
  }
  rememberToken(t);
  location.href = `${base}?token=${encodeURIComponent(t)}`;
});
