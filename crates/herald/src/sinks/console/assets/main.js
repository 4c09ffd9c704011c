// The console page: wires the app picker, the live feed, the log, the state panel and the sender.
import { api, openFeed, signOut } from './api.js';
import { Log } from './log.js';
import { StatePanel } from './state.js';
import { setupSender } from './sender.js';

const $ = (id) => document.getElementById(id);

const log = new Log({
  list: $('log'),
  empty: $('log-empty'),
  chips: $('type-filters'),
  channelInput: $('filter-channel'),
  pauseButton: $('pause'),
  clearButton: $('clear'),
  pausedNote: $('paused-note'),
});

const status = $('feed-status');
function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

const state = new StatePanel({
  connCount: $('conn-count'),
  chanCount: $('chan-count'),
  table: $('channels'),
  empty: $('channels-empty'),
  members: $('members'),
  membersChannel: $('members-channel'),
  onError: (e) => log.info(`state: ${e.message}`),
});

const picker = $('app');
let app = null;
let feed = null;
let retry = null;
/** The id of the last event shown for `app`: a reopened feed starts after it. */
let lastId = '';

function watch(id) {
  if (id !== app) lastId = '';
  app = id;
  if (feed) feed.close();
  clearTimeout(retry);
  setStatus('connecting', 'connecting…');
  feed = openFeed(id, lastId);
  const mine = feed;
  feed.onopen = () => {
    setStatus('live', 'live');
    state.refresh();
  };
  feed.onmessage = (m) => {
    let line;
    try {
      line = JSON.parse(m.data);
    } catch {
      return;
    }
    if (line.type === 'hello') {
      if (line.history > 0) {
        log.info(`${line.history} earlier event${line.history === 1 ? '' : 's'} from the server's recent history`);
      }
      return;
    }
    if (m.lastEventId) lastId = m.lastEventId;
    log.push(line);
    state.observe(line);
  };
  feed.onerror = () => {
    if (mine !== feed) return;
    if (feed.readyState === EventSource.CLOSED) {
      setStatus('down', 'disconnected');
      // The browser gave up (server gone or session ended): check, then open again.
      retry = setTimeout(async () => {
        try {
          await api('apps');
          if (mine === feed) watch(app);
        } catch {
          if (mine === feed) retry = setTimeout(() => watch(app), 3000);
        }
      }, 2000);
    } else {
      setStatus('connecting', 'reconnecting…');
    }
  };
  state.setApp(id);
}

async function start() {
  const { apps } = await api('apps');
  picker.replaceChildren(
    ...apps.map((a) => {
      const o = document.createElement('option');
      o.value = a.id;
      o.textContent = a.enabled ? a.id : `${a.id} (disabled)`;
      return o;
    }),
  );
  const wanted = new URLSearchParams(location.search).get('app');
  const first = apps.find((a) => a.id === wanted) || apps[0];
  if (!first) {
    setStatus('down', 'no apps');
    return;
  }
  picker.value = first.id;
  picker.addEventListener('change', () => {
    log.clear();
    log.info(`watching app ${picker.value}`);
    watch(picker.value);
  });
  watch(first.id);
}

setupSender($('send'), $('send-result'), () => app);
$('signout').addEventListener('click', signOut);
// A slow fallback; the feed triggers refreshes as things change.
setInterval(() => state.refresh(), 5000);

start().catch((e) => {
  setStatus('down', 'error');
  log.info(`cannot load apps: ${e.message}`);
});
