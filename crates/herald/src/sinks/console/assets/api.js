// Talking to the console API: the admin token, JSON calls and the live feed.

const KEY = 'herald-console-token';
export const base = document.body.dataset.base || '/console';

/** The token: from `?token=` (then remembered for this tab) or from this tab's storage. */
export function token() {
  const fromUrl = new URLSearchParams(location.search).get('token');
  if (fromUrl) {
    sessionStorage.setItem(KEY, fromUrl);
    return fromUrl;
  }
  return sessionStorage.getItem(KEY) || '';
}

export function rememberToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  location.href = `${base}/login`;
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
    headers: {
      Authorization: `Bearer ${token()}`,
      ...(body ? { 'Content-Type': 'application/json' } : {}),
    },
    cache: 'no-store',
  });
  const text = await res.text();
  if (res.status === 401) {
    signOut();
    throw new ApiError(401, text.trim());
  }
  if (!res.ok) throw new ApiError(res.status, text.trim() || res.statusText);
  return text ? JSON.parse(text) : {};
}

/** The live feed of `app` (EventSource cannot send headers: the token goes in the query). */
export function openFeed(app) {
  const url = new URL(`${base}/api/feed`, location.origin);
  url.searchParams.set('app', app);
  url.searchParams.set('token', token());
  return new EventSource(url);
}
