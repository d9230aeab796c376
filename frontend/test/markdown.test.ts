import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rehypeRawAsText, safeUrl } from '../lib/markdown.js';

test('keeps http(s), mailto, relative URLs and fragments', () => {
  for (const url of [
    'https://example.org/a?b=c#d',
    'http://example.org',
    'HTTPS://EXAMPLE.ORG',
    'mailto:someone@example.org',
    '/chat',
    'docs/page.html',
    '#section',
    '?q=1',
    'path/with:colon',
    './a:b',
  ]) {
    assert.equal(safeUrl(url), url, url);
  }
});

test('drops script and other schemes, however they are disguised', () => {
  for (const url of [
    'javascript:alert(1)',
    'JavaScript:alert(1)',
    ' javascript:alert(1)',
    '\u0000javascript:alert(1)',
    'java\tscript:alert(1)',
    'java\nscript:alert(1)',
    'jav\r\nascript:alert(1)',
    'vbscript:msgbox(1)',
    'data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==',
    'file:///etc/passwd',
    'blob:https://example.org/x',
  ]) {
    assert.equal(safeUrl(url), '', JSON.stringify(url));
  }
});

test('rehypeRawAsText turns raw HTML nodes into text, at any depth', () => {
  const tree = {
    type: 'root',
    children: [
      { type: 'raw', value: '<script>x()</script>' },
      {
        type: 'element',
        children: [
          { type: 'text', value: 'a ' },
          { type: 'raw', value: '<img src=x onerror=y()>' },
        ],
      },
    ],
  };
  rehypeRawAsText()(tree);
  assert.deepEqual(tree, {
    type: 'root',
    children: [
      { type: 'text', value: '<script>x()</script>' },
      {
        type: 'element',
        children: [
          { type: 'text', value: 'a ' },
          { type: 'text', value: '<img src=x onerror=y()>' },
        ],
      },
    ],
  });
});
