#!/usr/bin/env node
// Serves the static export (out/) and proxies /api/ to the backend on one port, as
// frontend/nginx.conf does in the Docker stack, for running the browser test without Docker.
//
//   node e2e/serve.mjs --root out --backend http://127.0.0.1:8000 [--host 127.0.0.1] [--port 0]
// prints "serving http://HOST:PORT" once ready.
//
// Mirrors nginx.conf: /api/* is passed through unchanged and streamed without buffering;
// /foo/ redirects to /foo; other paths try $uri, $uri.html, $uri/index.html, else 404.html
// with status 404.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i !== -1 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

export function createServer({ root, backend }) {
  const rootDir = path.resolve(root);
  const upstream = new URL(backend);

  function proxy(req, res) {
    const headers = { ...req.headers, host: req.headers.host ?? upstream.host };
    const out = http.request(
      { hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        res.flushHeaders();
        up.pipe(res);
      },
    );
    out.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'Content-Type': 'text/html' });
        res.end('<html><body><h1>502 Bad Gateway</h1></body></html>');
      } else res.destroy();
    });
    // The browser went away (Stop): hang up on the backend too, as nginx does.
    res.on('close', () => out.destroy());
    req.pipe(out);
  }

  function sendFile(res, file, status = 200) {
    res.writeHead(status, {
      'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'Cache-Control': 'no-cache',
    });
    fs.createReadStream(file).pipe(res);
  }

  return http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname.startsWith('/api/')) return proxy(req, res);
    let pathname;
    try {
      pathname = decodeURIComponent(url.pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (/^\/.+\/$/.test(pathname)) {
      res.writeHead(301, { Location: url.pathname.slice(0, -1) + url.search }).end();
      return;
    }
    const base = path.join(rootDir, path.normalize(pathname));
    if (!base.startsWith(rootDir)) {
      res.writeHead(403).end();
      return;
    }
    for (const candidate of [base, `${base}.html`, path.join(base, 'index.html')]) {
      if (isFile(candidate)) return sendFile(res, candidate);
    }
    const notFound = path.join(rootDir, '404.html');
    if (isFile(notFound)) return sendFile(res, notFound, 404);
    res.writeHead(404).end('not found');
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const host = arg('--host', '127.0.0.1');
  const server = createServer({ root: arg('--root', 'out'), backend: arg('--backend', 'http://127.0.0.1:8000') });
  server.listen(Number(arg('--port', '0')), host, () => {
    console.log(`serving http://${host}:${server.address().port}`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
