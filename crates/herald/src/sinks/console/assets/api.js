// Talking to the console API: JSON calls and the live feed. Sign-in left an HttpOnly session
// cookie that the browser sends with every request here: no token or session id goes in a URL,
// in a header set by this code, or in this page's storage.

export const base = document.body.dataset.base || '/console';

/** Leaves for the login prompt (replacing this page in the history). */
export function toLogin() {
  location.replace(`${base}/login`);
}

/** Ends the session on the server, then goes to the login prompt. */
export async function signOut() {
  try {
    await fetch(`${base}/logout`, { method: 'POST', cache: 'no-store' });
  } finally {
    toLogin();
  }
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A console API call; resolves to the parsed JSON body, rejects with ApiError. */
export async function api(path, { method = 'GET', body, params = {} } = {}) {
  const url = new URL(`${base}/api/${path}`, location.origin);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const res = await fetch(url, {
    method,
    body,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    cache: 'no-store',
  });
  const text = await res.text();
  if (res.status === 401) {
    toLogin();
    throw new ApiError(401, text.trim());
  }
  if (!res.ok) throw new ApiError(res.status, text.trim() || res.statusText);
  return text ? JSON.parse(text) : {};
}

/**
 * The feed of `app` (the session cookie goes with it, as with every same-origin request): the
 * app's recent events, then live ones. `after` is the id of the last event already shown, so
 * that a reopened feed sends only what came later (the browser does the same by itself when it
 * reconnects, with the Last-Event-ID header).
 */
export function openFeed(app, after) {
  const url = new URL(`${base}/api/feed`, location.origin);
  url.searchParams.set('app', app);
  if (after) url.searchParams.set('after', after);
  return new EventSource(url);
}
