// A tiny static server for the browser page on 127.0.0.1: the page, the esbuild bundle, and a
// /broadcasting/auth endpoint that answers like Laravel's (signed by the Node server SDK).

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Start serving; `bundlePath` is the esbuild output, `sdkFor(key)` the server SDK of an app. */
export function startPageServer({ bundlePath, sdkFor }) {
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://page.local');
      if (req.method === 'GET' && url.pathname === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(await readFile(path.join(here, 'index.html')));
      } else if (req.method === 'GET' && url.pathname === '/app.js') {
        res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
        res.end(await readFile(bundlePath));
      } else if (req.method === 'POST' && url.pathname === '/broadcasting/auth') {
        let body = '';
        for await (const chunk of req) body += chunk;
        const form = new URLSearchParams(body);
        const referer = new URL(req.headers.referer ?? 'http://x/');
        const sdk = sdkFor(referer.searchParams.get('key'));
        if (req.headers['x-csrf-token'] !== 'pt-csrf-token' || !sdk) {
          res.writeHead(403, { 'content-type': 'application/json' });
          res.end('{"message":"Forbidden"}');
          return;
        }
        const auth = sdk.authorizeChannel(form.get('socket_id'), form.get('channel_name'));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(auth));
      } else {
        res.writeHead(404);
        res.end();
      }
    } catch (e) {
      res.writeHead(500);
      res.end(String(e));
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, port: server.address().port }));
  });
}
