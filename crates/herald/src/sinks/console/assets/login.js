// The sign-in prompt: sends the token once, in a POST body; the server answers with an HttpOnly
// session cookie, and the console opens without the token anywhere in its URL.
import { base } from './api.js';

const form = document.getElementById('login');
const input = document.getElementById('token');
const error = document.getElementById('login-error');

// Earlier versions kept the token in this tab's storage: forget it.
sessionStorage.removeItem('herald-console-token');

function fail(message) {
  error.textContent = message;
  error.hidden = false;
  input.select();
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const t = input.value.trim();
  if (!t) return;
  error.hidden = true;
  let res;
  try {
    res = await fetch(`${base}/login`, {
      method: 'POST',
      body: new URLSearchParams({ token: t }),
      cache: 'no-store',
    });
  } catch (err) {
    fail(`Cannot reach the server: ${err.message}`);
    return;
  }
  if (res.ok) {
    input.value = '';
    location.replace(base);
    return;
  }
  const text = (await res.text()).trim();
  if (res.status === 401) fail('That token is not right.');
  else if (res.status === 429) fail('Too many wrong tokens: wait a moment and try again.');
  else fail(text || `${res.status} ${res.statusText}`);
});
