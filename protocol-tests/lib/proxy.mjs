// A TCP proxy in front of a node, for tests of what a client does when its connection is lost:
// `cut()` destroys every piped connection at once, without a WebSocket close; `down()` also
// holds new connections (accepted, nothing passed on) until `up()`, for an outage of a known
// length that a client's reconnect cannot cut short.

import net from 'node:net';

/** A proxy to `target` ({host, port}); resolves to {port, cut(), down(), up(), close()}. */
export function cuttingProxy(target) {
  const open = new Set();
  let held = null;
  const pipe = (client) => {
    const upstream = net.connect(target.port, target.host);
    client.pipe(upstream).pipe(client);
    const pair = [client, upstream];
    open.add(pair);
    const drop = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  };
  const server = net.createServer((client) => {
    if (held) {
      client.pause();
      client.on('error', () => client.destroy());
      held.push(client);
    } else {
      pipe(client);
    }
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: server.address().port,
        cut() {
          for (const [a, b] of open) {
            a.destroy();
            b.destroy();
          }
          open.clear();
        },
        down() {
          held = held ?? [];
          this.cut();
        },
        up() {
          const waiting = held ?? [];
          held = null;
          for (const c of waiting) {
            if (!c.destroyed) {
              pipe(c);
              c.resume();
            }
          }
        },
        close() {
          this.up();
          this.cut();
          server.close();
        },
      }),
    ),
  );
}
