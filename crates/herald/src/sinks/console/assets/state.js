// State at a glance: connection count, channels with counts, members of a presence channel.
import { api } from './api.js';

/** Line types after which the state is worth reading again. */
const CHANGES = new Set([
  'connected', 'disconnected', 'subscribed', 'unsubscribed', 'occupied', 'vacated',
  'member_added', 'member_removed', 'subscription_count',
]);

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

export class StatePanel {
  constructor({ connCount, chanCount, table, empty, members, membersChannel, onError }) {
    Object.assign(this, { connCount, chanCount, table, empty, members, membersChannel, onError });
    this.app = null;
    this.selected = null; // presence channel whose members are shown
    this.timer = null;
    this.inflight = false;
    this.again = false;
  }

  setApp(app) {
    this.app = app;
    this.selected = null;
    this.members.replaceChildren();
    this.membersChannel.textContent = 'no channel chosen';
    this.refresh();
  }

  /** Called for every feed line: re-reads the state soon after a change. */
  observe(line) {
    if (!CHANGES.has(line.type)) return;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.refresh();
    }, 150);
  }

  async refresh() {
    if (!this.app) return;
    if (this.inflight) {
      this.again = true;
      return;
    }
    this.inflight = true;
    try {
      const app = this.app;
      const s = await api('state', { params: { app } });
      if (app !== this.app) return;
      this.render(s);
      if (this.selected) await this.loadMembers(this.selected);
    } catch (e) {
      this.onError?.(e);
    } finally {
      this.inflight = false;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    }
  }

  render(s) {
    this.connCount.textContent = String(s.connections);
    this.chanCount.textContent = String(s.channels.length);
    const rows = s.channels.map((c) => {
      const tr = document.createElement('tr');
      tr.dataset.channel = c.name;
      const presence = c.name.startsWith('presence-');
      tr.append(
        cell(c.name, 'name'),
        cell(c.subscription_count ?? '–', 'num'),
        cell(presence ? String(c.user_count ?? '–') : '', 'num'),
      );
      if (presence) {
        tr.classList.add('presence');
        tr.tabIndex = 0;
        tr.title = 'Show members';
        const pick = () => this.select(c.name);
        tr.addEventListener('click', pick);
        tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') pick(); });
      }
      if (c.name === this.selected) tr.classList.add('selected');
      return tr;
    });
    this.table.replaceChildren(...rows);
    this.empty.hidden = rows.length > 0;
    const names = new Set(s.channels.map((c) => c.name));
    if (this.selected && !names.has(this.selected)) {
      this.selected = null;
      this.members.replaceChildren();
      this.membersChannel.textContent = 'no channel chosen';
    }
    if (!this.selected) {
      const first = s.channels.find((c) => c.name.startsWith('presence-'));
      if (first) this.select(first.name);
    }
  }

  async select(channel) {
    this.selected = channel;
    for (const tr of this.table.children) tr.classList.toggle('selected', tr.dataset.channel === channel);
    this.membersChannel.textContent = channel;
    await this.loadMembers(channel);
  }

  async loadMembers(channel) {
    try {
      const r = await api('members', { params: { app: this.app, channel } });
      if (channel !== this.selected) return;
      const items = r.users.map((u) => {
        const li = document.createElement('li');
        li.textContent = u.id;
        return li;
      });
      if (items.length === 0) {
        const li = document.createElement('li');
        li.className = 'empty';
        li.textContent = 'nobody here';
        items.push(li);
      }
      this.members.replaceChildren(...items);
    } catch (e) {
      this.onError?.(e);
    }
  }
}
