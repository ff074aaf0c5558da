// The page script, bundled by esbuild at test time. It sets Echo up the way a Laravel app's
// resources/js/echo.js does (window.Pusher, broadcaster "reverb", /broadcasting/auth with the
// CSRF token from the meta tag) and records what happens in window.__pt for the test to read.

import Echo from 'laravel-echo';
import Pusher from 'pusher-js';
import { enableRecovery } from '../../clients/recovery/dist/index.js';

window.Pusher = Pusher;

const params = new URLSearchParams(location.search);
const pt = { states: [], errors: [], events: [], subscribed: [], recovery: [] };
window.__pt = pt;

const $ = (id) => document.getElementById(id);
const item = (list, text) => {
  const li = document.createElement('li');
  li.textContent = text;
  $(list).appendChild(li);
};
$('origin').textContent = location.origin;
$('key').textContent = params.get('key');

// blockWebSocket=1: the network drops WebSocket upgrades (as some proxies do): every socket
// fails at once. pusher-js keeps its default transport list and must fall back to HTTP.
const blockWebSocket = params.get('blockWebSocket') === '1';
if (blockWebSocket) {
  window.WebSocket = class BlockedWebSocket {
    constructor() {
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 3;
        if (this.onerror) this.onerror(new Event('error'));
        if (this.onclose) this.onclose({ code: 1006, reason: '', wasClean: false });
      }, 10);
    }
    send() {}
    close() {}
  };
}

window.Echo = new Echo({
  broadcaster: 'reverb',
  key: params.get('key'),
  wsHost: params.get('wsHost'),
  wsPort: Number(params.get('wsPort')),
  wssPort: Number(params.get('wsPort')),
  httpHost: params.get('wsHost'),
  httpPort: Number(params.get('wsPort')),
  httpsPort: Number(params.get('wsPort')),
  forceTLS: params.get('tls') === '1',
  ...(blockWebSocket ? {} : { enabledTransports: ['ws', 'wss'] }),
});

// recover=1: the recovery helper (clients/recovery), one line, as an app would enable it.
if (params.get('recover') === '1') {
  enableRecovery(window.Echo.connector.pusher)
    .on('recovered', (e) => pt.recovery.push({ recovered: e }))
    .on('failed', (e) => pt.recovery.push({ failed: e }));
}

const connection = window.Echo.connector.pusher.connection;
connection.bind('state_change', ({ current }) => {
  pt.states.push(current);
  if (current === 'connected') pt.transport = connection.connection?.transport?.name;
  $('state').textContent = current;
  $('state').className = current;
  $('socket').textContent = connection.socket_id ?? '-';
});
connection.bind('error', (e) => {
  pt.errors.push(e);
  item('errors', JSON.stringify(e));
});

const record = (label) => (data) => {
  pt.events.push({ label, data });
  item('events', `${label}: ${JSON.stringify(data)}`);
};

const publicName = params.get('public');
const privateName = params.get('private');
if (publicName) {
  window.Echo.channel(publicName)
    .listen('.Published', record('Published'))
    .subscribed(() => pt.subscribed.push(publicName));
}
if (privateName) {
  window.Echo.private(privateName)
    .listen('OrderShipped', record('OrderShipped'))
    .listenForWhisper('typing', record('whisper typing'))
    .subscribed(() => pt.subscribed.push(`private-${privateName}`))
    .error((e) => pt.errors.push({ subscription: privateName, e }));
}
