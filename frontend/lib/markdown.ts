// URL policy for links and images in rendered answers. Pure: unit tested in test/markdown.test.ts.

const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);

/**
 * The URL to render for a link or image in an LLM answer, or '' to render none.
 *
 * Relative URLs and fragments are kept; absolute URLs only with http(s) or mailto.
 * Browsers ignore tabs and newlines anywhere in a URL and control characters or spaces
 * around it (so `java\tscript:` still runs script), so they are removed before the
 * scheme is looked at.
 */
export function safeUrl(url: string): string {
  // eslint-disable-next-line no-control-regex
  const cleaned = url.replace(/[\t\n\r]/g, '').replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, '');
  const colon = cleaned.indexOf(':');
  const firstOther = cleaned.search(/[/?#]/);
  // No scheme: a colon that is absent or comes after a path, query or fragment start.
  if (colon === -1 || (firstOther !== -1 && firstOther < colon)) return cleaned;
  const scheme = cleaned.slice(0, colon + 1).toLowerCase();
  return SAFE_PROTOCOLS.has(scheme) ? cleaned : '';
}

interface TreeNode {
  type: string;
  value?: string;
  children?: TreeNode[];
}

/**
 * Rehype plugin: HTML written in an answer (`raw` nodes) becomes plain text, before
 * rehype-sanitize runs. The sanitiser would otherwise delete it, and an answer that says
 * "use <br> here" would lose words; as text it is shown literally and never parsed.
 */
export function rehypeRawAsText() {
  return (tree: TreeNode): void => {
    const walk = (node: TreeNode) => {
      if (!node.children) return;
      node.children = node.children.map((child) =>
        child.type === 'raw' ? { type: 'text', value: child.value ?? '' } : child,
      );
      node.children.forEach(walk);
    };
    walk(tree);
  };
}
