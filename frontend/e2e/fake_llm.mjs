#!/usr/bin/env node
// A small OpenAI-compatible /chat/completions server for the browser test (no dependencies).
//
//   node e2e/fake_llm.mjs [--host 127.0.0.1] [--port 0]
// prints "fake LLM listening on http://HOST:PORT/v1" once ready; point the backend's
// LLM_API_BASE at that URL. It streams `data: {"choices":[{"index":0,"delta":{"content":…}}]}`
// events and `data: [DONE]`, as the backend's app/llm.py reads them. What it answers depends
// on a keyword in the last user message:
//   e2e-markdown  a Markdown answer with a table, a list and a code block
//   e2e-hostile   an answer full of HTML/script injection attempts
//   e2e-slow      a long answer, one word every 300 ms (for the Stop button)
//   e2e-fail      HTTP 500 with a JSON error (the backend answers 502)
//   anything else "Echo: <message>", in small pieces 40 ms apart
import http from 'node:http';

export const MARKDOWN_ANSWER = [
  'Here is a **summary**:',
  '',
  '| Name | Count |',
  '| ---- | ----: |',
  '| apples | 3 |',
  '| pears | 5 |',
  '',
  '- first item',
  '- second item',
  '- third item',
  '',
  '```python',
  'def greet(name):',
  '    print(f"hello {name}")',
  '    return "a long line that must scroll inside the code block, not widen the page: ' + 'x'.repeat(60) + '"',
  '```',
  '',
  'Done.',
].join('\n');

// Each line tries a different way in; the test checks that none of them became an element,
// ran, or opened a dialog. window.__pwned is the flag they would set.
export const HOSTILE_ANSWER = [
  'Careful: <img src=x onerror="window.__pwned=\'img\'"> and more.',
  '',
  '<script>window.__pwned = "script"; alert("script")</script>',
  '',
  '[click me](javascript:window.__pwned=\'link\';alert(1))',
  '',
  '[tabbed](java\tscript:window.__pwned=\'tab\')',
  '',
  '<a href="javascript:window.__pwned=\'a\'">raw anchor</a>',
  '',
  '<iframe src="javascript:parent.__pwned=\'iframe\'"></iframe>',
  '',
  '![pic](javascript:window.__pwned=\'image\')',
  '',
  '<svg onload="window.__pwned=\'svg\'"></svg>',
  '',
  'End of hostile answer.',
].join('\n');

function pieces(text, size) {
  const out = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function stream(res, chunks, delayMs) {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { role: 'assistant' } }] })}\n\n`);
  for (const c of chunks) {
    if (res.destroyed) return; // the backend hung up (Stop): stop talking
    res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: c } }] })}\n\n`);
    await sleep(delayMs);
  }
  res.end('data: [DONE]\n\n');
}

export function createFakeLLM() {
  return http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', async () => {
      if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) {
        res.writeHead(404, { 'Content-Type': 'application/json' });
        res.end('{"error":{"message":"not found"}}');
        return;
      }
      let last = '';
      try {
        const messages = JSON.parse(body).messages ?? [];
        last = [...messages].reverse().find((m) => m.role === 'user')?.content ?? '';
      } catch {
        res.writeHead(400, { 'Content-Type': 'application/json' });
        res.end('{"error":{"message":"bad JSON"}}');
        return;
      }
      try {
        if (last.includes('e2e-fail')) {
          res.writeHead(500, { 'Content-Type': 'application/json' });
          res.end('{"error":{"message":"the fake model is down on purpose"}}');
        } else if (last.includes('e2e-markdown')) {
          await stream(res, pieces(MARKDOWN_ANSWER, 12), 15);
        } else if (last.includes('e2e-hostile')) {
          await stream(res, pieces(HOSTILE_ANSWER, 16), 10);
        } else if (last.includes('e2e-slow')) {
          const words = Array.from({ length: 200 }, (_, i) => `word${i} `);
          await stream(res, words, 300);
        } else {
          await stream(res, pieces(`Echo: ${last}`, 3), 40);
        }
      } catch {
        res.destroy();
      }
    });
  });
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i !== -1 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const host = arg('--host', '127.0.0.1');
  const server = createFakeLLM();
  server.listen(Number(arg('--port', '0')), host, () => {
    console.log(`fake LLM listening on http://${host}:${server.address().port}/v1`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
