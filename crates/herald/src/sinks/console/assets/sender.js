// The event creator: publishes through the same executor as `POST /apps/{id}/events`.
import { api } from './api.js';

export function setupSender(form, result, currentApp) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const channels = String(f.get('channel')).split(',').map((c) => c.trim()).filter(Boolean);
    const name = String(f.get('event')).trim();
    let data = String(f.get('data'));
    let note = '';
    try {
      data = JSON.stringify(JSON.parse(data));
    } catch {
      note = ' (not JSON: sent as a string)';
    }
    result.className = '';
    result.textContent = 'sending…';
    try {
      await api('events', {
        method: 'POST',
        params: { app: currentApp() },
        body: JSON.stringify({ name, channels, data }),
      });
      result.className = 'ok';
      result.textContent = `Sent ${name} to ${channels.join(', ')}${note}`;
    } catch (err) {
      result.className = 'error';
      result.textContent = `${err.status || ''} ${err.message}`.trim();
    }
  });
}
