// pusher-js and Laravel Echo set up the way applications set them up, with channel authorization
// and user authentication answered locally by the Node server SDK (what an app's
// /broadcasting/auth and /broadcasting/user-auth endpoints would return).

import { createRequire } from 'node:module';
import { APPS, node, serverSdk } from './env.mjs';

const require = createRequire(import.meta.url);
const Pusher = require('pusher-js');

const live = new Set();

/** Disconnect every pusher-js / Echo client a test created. */
export function closeAllClients() {
  for (const c of live) {
    try {
      c.disconnect();
    } catch {
      /* already gone */
    }
  }
  live.clear();
}

function connectionOptions(i) {
  const n = node(i);
  return {
    wsHost: n.host,
    wsPort: n.port,
    wssPort: n.port,
    httpHost: n.host,
    httpPort: n.port,
    httpsPort: n.port,
    forceTLS: n.tls,
    enabledTransports: ['ws', 'wss'],
    cluster: '',
    disableStats: true,
  };
}

/**
 * A pusher-js client.
 * opts: node, presence (channel_data object for presence channels, or a function of the
 * channel name; null = send no channel_data), user (user_data for signin()), sdk, options.
 */
export function pusherJs(app = APPS.main, opts = {}) {
  const sdk = opts.sdk ?? serverSdk(app, opts.node ?? 0);
  const presenceFor = (channel) => (typeof opts.presence === 'function' ? opts.presence(channel) : opts.presence);
  const client = new Pusher(app.key, {
    ...connectionOptions(opts.node ?? 0),
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          const data = channelName.startsWith('presence-') ? presenceFor(channelName) : undefined;
          callback(null, sdk.authorizeChannel(socketId, channelName, data ?? undefined));
        } catch (e) {
          callback(e, null);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          callback(null, sdk.authenticateUser(socketId, opts.user));
        } catch (e) {
          callback(e, null);
        }
      },
    },
    ...(opts.options ?? {}),
  });
  live.add(client);
  return client;
}

/** Resolve when `client` (pusher-js) is connected; reject with `what` otherwise. */
export function connected(client, ms = 4000, what = 'pusher-js did not reach the "connected" state') {
  return new Promise((resolve, reject) => {
    if (client.connection.state === 'connected') return resolve(client.connection.socket_id);
    const states = [];
    const t = setTimeout(() => {
      client.connection.unbind('state_change', onChange);
      reject(new Error(`${what} within ${ms} ms (states: ${states.join(' -> ') || client.connection.state})`));
    }, ms);
    const onChange = ({ current }) => {
      states.push(current);
      if (current === 'connected') {
        clearTimeout(t);
        client.connection.unbind('state_change', onChange);
        resolve(client.connection.socket_id);
      }
    };
    client.connection.bind('state_change', onChange);
  });
}

/**
 * Resolve with the data of the next `event` emitted by `bindable` (a pusher-js channel,
 * connection or user object). Second argument of the callback (metadata) is returned as `.meta`
 * when `withMeta` is set.
 */
export function nextEvent(bindable, event, ms = 3000, what = `event "${event}" did not arrive`, withMeta = false) {
  return new Promise((resolve, reject) => {
    const handler = (data, meta) => {
      clearTimeout(t);
      bindable.unbind(event, handler);
      resolve(withMeta ? { data, meta } : data);
    };
    const t = setTimeout(() => {
      bindable.unbind(event, handler);
      reject(new Error(`${what} within ${ms} ms`));
    }, ms);
    bindable.bind(event, handler);
  });
}

/** Collect every `event` on `bindable` into an array (for "never received" checks). */
export function collect(bindable, event) {
  const got = [];
  bindable.bind(event, (data, meta) => got.push({ data, meta }));
  return got;
}

/** Subscribe with pusher-js and wait for success; reject (naming the channel) on an error. */
export function subscribed(client, channelName, ms = 4000) {
  const channel = client.subscribe(channelName);
  if (channel.subscribed) return Promise.resolve(channel);
  return new Promise((resolve, reject) => {
    const done = (err) => {
      clearTimeout(t);
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', bad);
      channel.unbind('pusher:error', bad);
      if (err) reject(err);
      else resolve(channel);
    };
    const ok = () => done();
    const bad = (e) => done(new Error(`pusher-js subscription to "${channelName}" failed: ${JSON.stringify(e)}`));
    const t = setTimeout(
      () => done(new Error(`pusher-js subscription to "${channelName}" did not succeed within ${ms} ms`)),
      ms,
    );
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
    channel.bind('pusher:error', bad);
  });
}

/**
 * Laravel Echo with the Reverb broadcaster, authorized the way a Laravel app's
 * /broadcasting/auth answers (presence: string user_id, user_info from the user model).
 * opts: node, user ({id, name}) for presence channels, badAuth (hand out invalid signatures),
 * options (pusher-js options over the defaults, e.g. enabledTransports).
 */
export async function echo(app = APPS.main, opts = {}) {
  const { default: Echo } = await import('laravel-echo');
  const sdk = serverSdk(app, opts.node ?? 0);
  const user = opts.user ?? { id: 1, name: 'Taylor' };
  const instance = new Echo({
    broadcaster: 'reverb',
    key: app.key,
    ...connectionOptions(opts.node ?? 0),
    Pusher,
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        try {
          const presence = channel.name.startsWith('presence-')
            ? { user_id: String(user.id), user_info: { id: user.id, name: user.name } }
            : undefined;
          const token = sdk.authorizeChannel(socketId, channel.name, presence);
          if (opts.badAuth) token.auth = `${app.key}:${'0'.repeat(64)}`;
          callback(null, token);
        } catch (e) {
          callback(e, null);
        }
      },
    }),
    ...(opts.options ?? {}),
  });
  const pusher = instance.connector.pusher;
  live.add(pusher);
  await connected(pusher, 4000, 'Laravel Echo did not connect');
  return instance;
}

export { Pusher };
