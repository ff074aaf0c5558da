// A small, independent signer for the HTTP API (protocol.md 5.2), so that tests can send exactly the
// bytes a given SDK sends (pusher-http-php through Laravel, pusher-http-python, pusher-http-node)
// or deliberately broken requests that the official SDKs refuse to build.

import { createHash, createHmac } from 'node:crypto';
import { node } from './env.mjs';

export const md5 = (s) => createHash('md5').update(s).digest('hex');
export const hmac = (secret, s) => createHmac('sha256', secret).update(s).digest('hex');

/** RFC 3986 encoding as done by Guzzle / PHP's http_build_query(..., PHP_QUERY_RFC3986). */
export const rfc3986 = (s) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/**
 * PHP's json_encode with default flags: "/" becomes "\/" and every non-ASCII character a \uXXXX
 * escape (UTF-16 code units, lowercase hex).
 */
export function phpJsonEncode(value) {
  return JSON.stringify(value)
    .replace(/\//g, '\\/')
    .replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Build the signed query string.
 * style: 'node'   values unencoded, body_md5 only when there is a body
 *        'php'    RFC 3986 encoded values, body_md5 on every POST
 *        'python' values unencoded, body_md5 on every request (md5("") on GET)
 * Returns {query, stringToSign}.
 */
export function signedQuery({ app, method, path, params = {}, body = '', style = 'node', timestamp, key, secret, override = {} }) {
  const q = {
    auth_key: key ?? app.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...params,
  };
  const withMd5 = style === 'python' || (style === 'php' && method === 'POST') || (style === 'node' && body !== '');
  if (withMd5) q.body_md5 = md5(body);
  Object.assign(q, override.beforeSign ?? {});
  const keys = Object.keys(q).sort();
  const canonical = keys.map((k) => `${k.toLowerCase()}=${q[k]}`).join('&');
  const stringToSign = `${method}\n${path}\n${canonical}`;
  q.auth_signature = override.signature ?? hmac(secret ?? app.secret, stringToSign);
  Object.assign(q, override.afterSign ?? {});
  const enc = style === 'php' ? rfc3986 : (s) => s;
  const query = Object.keys(q)
    .map((k) => `${k}=${enc(String(q[k]))}`)
    .join('&');
  return { query, stringToSign };
}

/**
 * Send a signed request. `path` is relative to /apps/{id} unless `absolutePath` is set.
 * `body` may be an object (JSON.stringify'd), or a string sent byte for byte.
 * Returns {status, text, json, headers}.
 */
export async function signedRequest(app, method, path, opts = {}) {
  const fullPath = opts.absolutePath ? path : `/apps/${app.id}${path}`;
  const body = opts.body === undefined ? '' : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  const { query } = signedQuery({ ...opts, app, method, path: fullPath, body });
  const headers = { ...(opts.headers ?? {}) };
  if (body !== '') headers['content-type'] = 'application/json';
  const res = await fetch(`${node(opts.node ?? 0).httpBase}${fullPath}?${query}`, {
    method,
    headers,
    body: method === 'GET' ? undefined : body,
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json, headers: res.headers };
}
