// The live log: rows for feed lines, filters by channel and type, pause with a bounded backlog.

/** Type filters: a group name, its label and the line types it covers. */
export const GROUPS = [
  { id: 'connections', label: 'Connections', types: ['connected', 'disconnected'] },
  { id: 'subscriptions', label: 'Subscriptions', types: ['subscribed', 'unsubscribed', 'subscription_count'] },
  { id: 'channels', label: 'Occupied / vacated', types: ['occupied', 'vacated', 'cache_miss'] },
  { id: 'presence', label: 'Members', types: ['member_added', 'member_removed'] },
  { id: 'client', label: 'Client events', types: ['client_event'] },
  { id: 'api', label: 'API publishes', types: ['api_publish'] },
  { id: 'webhooks', label: 'Webhooks', types: ['webhook_sent', 'webhook_failed'] },
];

const GROUP_OF = new Map(GROUPS.flatMap((g) => g.types.map((t) => [t, g.id])));

const LABELS = {
  connected: 'connected',
  disconnected: 'disconnected',
  subscribed: 'subscribed',
  unsubscribed: 'unsubscribed',
  subscription_count: 'sub count',
  occupied: 'occupied',
  vacated: 'vacated',
  cache_miss: 'cache miss',
  member_added: 'member added',
  member_removed: 'member removed',
  client_event: 'client event',
  api_publish: 'api publish',
  webhook_sent: 'webhook sent',
  webhook_failed: 'webhook failed',
  skipped: 'skipped',
  info: 'info',
};

/** Rows kept in the page; older ones are removed. */
const MAX_ROWS = 2000;
/** Lines held while paused; beyond this they are counted, not kept. */
const MAX_BACKLOG = 5000;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function clock(ts) {
  const d = new Date(ts || Date.now());
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
}

/** Event data as the server previewed it, with an ellipsis when it was cut. */
function payload(line) {
  // data_len counts UTF-8 bytes, as the server cut them.
  const shown = new TextEncoder().encode(line.data).length;
  return line.data + (line.data_len > shown ? '…' : '');
}

/** Detail parts of a line: [label, value] pairs and free text. */
function details(line) {
  const d = [];
  const kv = (k, v) => d.push([k, v]);
  switch (line.type) {
    case 'connected':
    case 'disconnected':
    case 'subscribed':
    case 'unsubscribed':
      kv('socket', line.socket_id);
      break;
    case 'subscription_count':
      kv('count', line.count);
      break;
    case 'occupied':
    case 'vacated':
    case 'cache_miss':
      break;
    case 'member_added':
    case 'member_removed':
      kv('user', line.user_id);
      break;
    case 'client_event':
      kv('event', line.event);
      kv('socket', line.socket_id);
      if (line.user_id) kv('user', line.user_id);
      kv('size', bytes(line.data_len));
      d.push(['data', payload(line)]);
      break;
    case 'api_publish':
      kv('event', line.event);
      kv('size', bytes(line.data_len));
      if (line.except) kv('except', line.except);
      if (line.data !== undefined) d.push(['data', payload(line)]);
      break;
    case 'webhook_sent':
    case 'webhook_failed':
      kv('events', (line.events || []).map((e) => (line.channel ? e.name : `${e.name} ${e.channel ?? ''}`.trim())).join(', '));
      kv('url', line.url);
      kv('result', line.result);
      break;
    case 'skipped':
      d.push(['', `${line.count} events skipped: this viewer fell behind`]);
      break;
    case 'info':
      d.push(['', line.text]);
      break;
    default:
      d.push(['', JSON.stringify(line)]);
  }
  return d;
}

export class Log {
  constructor({ list, empty, chips, channelInput, pauseButton, clearButton, pausedNote }) {
    this.list = list;
    this.empty = empty;
    this.pauseButton = pauseButton;
    this.pausedNote = pausedNote;
    this.rows = []; // newest last; DOM order is newest first
    this.paused = false;
    this.backlog = [];
    this.dropped = 0;
    this.channelFilter = '';
    this.hiddenGroups = new Set();

    for (const g of GROUPS) {
      const b = el('button', `chip g-${g.id}`, g.label);
      b.type = 'button';
      b.dataset.group = g.id;
      b.setAttribute('aria-pressed', 'true');
      b.addEventListener('click', () => {
        const on = this.hiddenGroups.has(g.id);
        if (on) this.hiddenGroups.delete(g.id);
        else this.hiddenGroups.add(g.id);
        b.setAttribute('aria-pressed', String(on));
        this.refilter();
      });
      chips.append(b);
    }
    channelInput.addEventListener('input', () => {
      this.channelFilter = channelInput.value.trim();
      this.refilter();
    });
    this.channelInput = channelInput;
    pauseButton.addEventListener('click', () => this.setPaused(!this.paused));
    clearButton.addEventListener('click', () => this.clear());
  }

  /** Adds a feed line (or holds it while paused). */
  push(line) {
    if (this.paused) {
      if (this.backlog.length < MAX_BACKLOG) this.backlog.push(line);
      else this.dropped += 1;
      this.updatePaused();
      return;
    }
    this.render(line);
  }

  /** A line of the console's own (not from the feed). */
  info(text) {
    this.render({ type: 'info', ts: Date.now(), text });
  }

  setPaused(p) {
    this.paused = p;
    this.pauseButton.textContent = p ? 'Resume' : 'Pause';
    this.pauseButton.classList.toggle('active', p);
    if (!p) {
      const held = this.backlog;
      this.backlog = [];
      for (const line of held) this.render(line);
      if (this.dropped) this.render({ type: 'skipped', ts: Date.now(), count: this.dropped });
      this.dropped = 0;
    }
    this.updatePaused();
  }

  updatePaused() {
    const n = this.backlog.length + this.dropped;
    this.pausedNote.hidden = !this.paused;
    this.pausedNote.textContent = `Paused: ${n} new event${n === 1 ? '' : 's'} held${this.dropped ? ` (${this.dropped} beyond the limit will be skipped)` : ''}.`;
  }

  clear() {
    this.rows = [];
    this.list.replaceChildren();
    this.empty.hidden = false;
  }

  visible(line) {
    const g = GROUP_OF.get(line.type);
    if (g && this.hiddenGroups.has(g)) return false;
    if (this.channelFilter) {
      if (!line.channel) return false;
      if (!line.channel.includes(this.channelFilter)) return false;
    }
    return true;
  }

  refilter() {
    for (const r of this.rows) r.node.hidden = !this.visible(r.line);
  }

  render(line) {
    const li = el('li', `row t-${line.type} g-${GROUP_OF.get(line.type) || 'system'}`);
    li.dataset.type = line.type;
    if (line.channel) li.dataset.channel = line.channel;
    li.append(el('time', 'ts', clock(line.ts)));
    li.append(el('span', 'badge', LABELS[line.type] || line.type));
    const ch = el('span', 'chan', line.channel || '');
    if (line.channel) {
      ch.title = 'Filter by this channel';
      ch.addEventListener('click', () => {
        this.channelInput.value = line.channel;
        this.channelFilter = line.channel;
        this.refilter();
      });
    }
    li.append(ch);
    const det = el('span', 'detail');
    for (const [k, v] of details(line)) {
      const part = el('span', k === 'data' ? 'kv data' : 'kv');
      if (k && k !== 'data') part.append(el('i', '', k));
      part.append(document.createTextNode(String(v ?? '')));
      det.append(part);
    }
    li.append(det);
    li.hidden = !this.visible(line);
    this.list.prepend(li);
    this.rows.push({ line, node: li });
    if (this.rows.length > MAX_ROWS) this.rows.shift().node.remove();
    this.empty.hidden = true;
  }
}
