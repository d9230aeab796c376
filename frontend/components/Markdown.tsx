'use client';

// Renders an LLM answer as Markdown (GFM: tables, lists, strikethrough, task lists).
// Safety: react-markdown builds React elements and never renders raw HTML from the text
// (no rehype-raw): rehypeRawAsText makes such HTML literal text, then rehype-sanitize
// (GitHub's schema) strips anything unexpected from the tree as a second line; safeUrl
// drops javascript:, data: and other non-http(s) URLs.
import { memo, useRef, useState, type ReactNode } from 'react';
import ReactMarkdown, { type Components } from 'react-markdown';
import remarkGfm from 'remark-gfm';
import rehypeSanitize from 'rehype-sanitize';
import { rehypeRawAsText, safeUrl } from '@/lib/markdown';
import { copyText } from './clipboard';

function CodeBlock({ children }: { children?: ReactNode }) {
  const preRef = useRef<HTMLPreElement>(null);
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');

  async function copy() {
    const ok = await copyText(preRef.current?.textContent ?? '');
    setState(ok ? 'copied' : 'failed');
    window.setTimeout(() => setState('idle'), 2000);
  }

  return (
    <div className="codeblock">
      <button type="button" className="copy" onClick={copy}>
        {state === 'copied' ? 'Copied' : state === 'failed' ? 'Copy failed' : 'Copy code'}
      </button>
      <pre ref={preRef}>{children}</pre>
    </div>
  );
}

const components: Components = {
  pre: ({ children }) => <CodeBlock>{children}</CodeBlock>,
  a: ({ href, children }) =>
    href ? (
      <a href={href} target="_blank" rel="noopener noreferrer">
        {children}
      </a>
    ) : (
      <span className="dead-link">{children}</span>
    ),
  img: ({ src, alt }) =>
    // Images from an answer are not loaded (no tracking pixels, no requests to URLs the
    // model chose); show a link to them instead.
    typeof src === 'string' && src ? (
      <a href={src} target="_blank" rel="noopener noreferrer">
        {alt || 'image'}
      </a>
    ) : (
      <span>{alt}</span>
    ),
  table: ({ children }) => (
    <div className="table-wrap">
      <table>{children}</table>
    </div>
  ),
};

const remarkPlugins = [remarkGfm];
const rehypePlugins = [rehypeRawAsText, rehypeSanitize];

/** Memoised: while an answer streams, only the message that changed is parsed again. */
export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="markdown">
      <ReactMarkdown
        remarkPlugins={remarkPlugins}
        rehypePlugins={rehypePlugins}
        urlTransform={safeUrl}
        components={components}
      >
        {text}
      </ReactMarkdown>
    </div>
  );
});
