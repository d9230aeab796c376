#!/usr/bin/env node
// Real-browser end-to-end test of the chat UI (headless Chromium driven by playwright-core).
//
//   node e2e/chat.e2e.mjs --base-url http://127.0.0.1:PORT [--screenshot-dir DIR] [--skip REGEX]
//
// --skip leaves out the checks whose names match (to try one check on a broken build; the
// first four set up the user and the first conversation that later ones use).
// It needs a running stack at --base-url (the static export with /api/ proxied to the
// backend) whose backend talks to e2e/fake_llm.mjs: the answers are chosen by keywords in
// the message (e2e-markdown, e2e-hostile, e2e-slow, e2e-fail). It does not care how the
// stack was started (e2e/run-local.sh, or nginx + backend in Docker).
// Browser: $CHROMIUM, default /usr/bin/chromium (Debian's package).
// Exits 0 when every check passed, 1 with "FAIL: <check>: <why>" otherwise.
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { chromium } from 'playwright-core';

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i !== -1 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const baseUrl = (arg('--base-url', process.env.E2E_BASE_URL) ?? '').replace(/\/$/, '');
if (!baseUrl) {
  console.error('usage: node e2e/chat.e2e.mjs --base-url http://HOST:PORT [--screenshot-dir DIR]');
  process.exit(2);
}
const shotDir = path.resolve(arg('--screenshot-dir', fs.mkdtempSync(path.join(os.tmpdir(), 'chat-e2e-'))));
fs.mkdirSync(shotDir, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const TIMEOUT = 10_000;
const username = `e2e_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
const password = 'e2e-password-123';

const skip = arg('--skip', '') ? new RegExp(arg('--skip', ''), 'i') : null;

let passed = 0;
let skipped = 0;
class CheckFailed extends Error {}
function expect(cond, why) {
  if (!cond) throw new CheckFailed(why);
}
/** Collects several independent findings of one check, so that each can be seen failing. */
function findings() {
  const found = [];
  return {
    expect(cond, why) {
      if (!cond) found.push(why);
    },
    done() {
      if (found.length) throw new CheckFailed(found.join('; '));
    },
  };
}
async function check(name, fn) {
  if (skip?.test(name)) {
    skipped++;
    console.log(`skip - ${name}`);
    return;
  }
  const t0 = Date.now();
  try {
    await fn();
  } catch (err) {
    const why = err instanceof CheckFailed ? err.message : (err?.stack ?? String(err));
    throw new Error(`FAIL: ${name}: ${why}`);
  }
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
}

const browser = await chromium
  .launch({
    executablePath,
    headless: true,
    // Playwright gives every launch a fresh temporary profile (--user-data-dir).
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
  .catch((err) => {
    console.error(`FAIL: cannot start Chromium at ${executablePath} (set CHROMIUM): ${err.message.split('\n')[0]}`);
    process.exit(1);
  });

const dialogs = [];
const pageErrors = [];
function watch(page) {
  // A dialog is what an injected alert() would open: record it, never leave it open.
  page.on('dialog', (d) => {
    dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT);
}

const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
await context
  .grantPermissions(['clipboard-read', 'clipboard-write'], { origin: baseUrl })
  .catch(() => {});
const page = await context.newPage();
watch(page);
let mobile = null;

// Helpers on the chat page ---------------------------------------------------------------
const assistantMessages = () => page.locator('.msg.assistant');
const lastAssistant = () => assistantMessages().last();
const stopButton = () => page.getByRole('button', { name: 'Stop', exact: true });
const convItem = (title) => page.locator('li.conv').filter({ has: page.locator('.conv-title', { hasText: title }) });

/** Types a message, sends it with Enter, and waits until the answer is no longer streaming. */
async function send(text, { waitDone = true } = {}) {
  const users = await page.locator('.msg.user').count();
  await page.getByRole('textbox', { name: 'Message' }).fill(text);
  await page.getByRole('textbox', { name: 'Message' }).press('Enter');
  await page.locator('.msg.user').nth(users).waitFor();
  if (waitDone) await stopButton().waitFor({ state: 'detached', timeout: 20_000 });
}

/** Awaits a Playwright wait; a timeout becomes a failure that says what did not happen. */
async function waitOr(promise, why) {
  try {
    await promise;
  } catch (err) {
    if (err?.name === 'TimeoutError') throw new CheckFailed(why);
    throw err;
  }
}

async function noHorizontalScroll(p) {
  const { sw, cw } = await p.evaluate(() => ({
    sw: document.documentElement.scrollWidth,
    cw: document.documentElement.clientWidth,
  }));
  expect(sw <= cw, `the page scrolls sideways: scrollWidth ${sw} > width ${cw}`);
}

let exitCode = 0;
try {
  await check('login page loads with its title and favicon', async () => {
    const res = await page.goto(`${baseUrl}/`);
    expect(res?.ok(), `GET / answered ${res?.status()}`);
    expect((await page.title()) === 'Chat', `title is "${await page.title()}"`);
    const icon = await page.locator('link[rel~="icon"]').first().getAttribute('href');
    expect(icon, 'no <link rel="icon"> in the page');
    const iconRes = await page.request.get(new URL(icon, `${baseUrl}/`).href);
    expect(iconRes.ok(), `favicon ${icon} answered ${iconRes.status()}`);
    expect(/svg/.test(iconRes.headers()['content-type'] ?? ''), `favicon is ${iconRes.headers()['content-type']}`);
  });

  await check(`register a new user (${username})`, async () => {
    if (new URL(page.url()).pathname !== '/') await page.goto(`${baseUrl}/`);
    await page.locator('input[name="username"]').fill(username);
    await page.locator('input[name="password"]').fill(password);
    await page.getByRole('button', { name: 'Register' }).click();
    await page.waitForURL(/\/chat$/);
    await page.getByRole('textbox', { name: 'Message' }).waitFor();
  });

  await check('log out, then log in again', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL((u) => new URL(u).pathname === '/');
    expect(
      (await page.evaluate(() => localStorage.getItem('chat.token'))) === null,
      'the token is still stored after logging out',
    );
    await page.locator('input[name="username"]').fill(username);
    await page.locator('input[name="password"]').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForURL(/\/chat$/);
    await page.getByRole('textbox', { name: 'Message' }).waitFor();
  });

  await check('send a message and see the answer stream in', async () => {
    // Record every length the answer bubble goes through while it streams.
    await page.evaluate(() => {
      window.__lengths = [];
      new MutationObserver(() => {
        const all = document.querySelectorAll('.msg.assistant');
        const last = all[all.length - 1];
        if (last) window.__lengths.push(last.textContent.length);
      }).observe(document.querySelector('.messages'), { subtree: true, childList: true, characterData: true });
    });
    await send('hello from e2e');
    const text = await lastAssistant().innerText();
    expect(text.includes('Echo: hello from e2e'), `the answer is "${text}"`);
    const distinct = new Set(await page.evaluate(() => window.__lengths.filter((n) => n > 1)));
    expect(distinct.size >= 3, `the answer appeared in ${distinct.size} step(s), not streamed`);
    // The new conversation is in the list and is the current one.
    await page.locator('li.conv.active .conv-title', { hasText: 'hello from e2e' }).waitFor();
  });

  await check('a Markdown answer renders as a table, a list and a code block', async () => {
    await send('show me e2e-markdown');
    const msg = lastAssistant();
    const headers = await msg.locator('table th').allInnerTexts();
    expect(headers.join('|') === 'Name|Count', `table headers are ${JSON.stringify(headers)}`);
    expect((await msg.locator('table td').allInnerTexts()).includes('apples'), 'no "apples" cell');
    expect((await msg.locator('ul > li').count()) === 3, 'the list does not have 3 items');
    expect((await msg.locator('strong', { hasText: 'summary' }).count()) === 1, 'no bold "summary"');
    const code = msg.locator('pre code');
    expect((await code.count()) === 1, 'no code block');
    const codeText = await code.textContent();
    expect(codeText.includes('def greet(name):'), `code block holds ${JSON.stringify(codeText)}`);
    const font = await code.evaluate((el) => getComputedStyle(el).fontFamily);
    expect(/mono|consolas|menlo|courier/i.test(font), `code font is ${font}`);
    const text = await msg.innerText();
    expect(!text.includes('| Name') && !text.includes('**') && !text.includes('```'), 'Markdown syntax is shown raw');
    await page.screenshot({ path: path.join(shotDir, 'desktop-chat.png') });
  });

  await check('the copy button copies the code block', async () => {
    const msg = lastAssistant();
    const button = msg.getByRole('button', { name: 'Copy code' });
    await button.click();
    await msg.getByRole('button', { name: 'Copied' }).waitFor({ timeout: 3000 });
    const secure = await page.evaluate(() => window.isSecureContext);
    if (secure) {
      const clip = await page.evaluate(() => navigator.clipboard.readText());
      const code = await msg.locator('pre code').textContent();
      expect(clip === code, `the clipboard holds ${JSON.stringify(clip.slice(0, 80))}`);
    }
  });

  await check('a hostile answer renders as inert text', async () => {
    await page.evaluate(() => {
      delete window.__pwned;
    });
    await send('now the e2e-hostile answer');
    await page.waitForTimeout(500); // give an injected onerror/onload time to fire
    const f = findings();
    const msg = lastAssistant();
    const text = await msg.innerText();
    f.expect(text.includes('End of hostile answer.'), 'the hostile answer did not arrive whole');
    for (const literal of ['<img src=x onerror=', '<script>', '<iframe', '<svg onload=']) {
      f.expect(text.includes(literal), `${literal} is not shown as text`);
    }
    const injected = await msg.locator('img, script, iframe, svg, object, embed, style, form, input').count();
    f.expect(injected === 0, `${injected} injected element(s) in the answer`);
    const badLinks = await page.evaluate(
      () => [...document.querySelectorAll('[href], [src]')]
        .map((e) => e.getAttribute('href') ?? e.getAttribute('src'))
        .filter((u) => /^\s*(javascript|data|vbscript):/i.test(u.replace(/[\t\n\r]/g, ''))),
    );
    f.expect(badLinks.length === 0, `script URLs in the page: ${badLinks.join(', ')}`);
    // Clicking what was a javascript: link must do nothing either.
    if ((await msg.getByText('click me').count()) > 0) await msg.getByText('click me').click();
    await page.waitForTimeout(200);
    const pwned = await page.evaluate(() => window.__pwned);
    f.expect(pwned === undefined, `injected script ran (window.__pwned = ${JSON.stringify(pwned)})`);
    f.expect(dialogs.length === 0, `a dialog opened: ${dialogs.join('; ')}`);
    f.expect(new URL(page.url()).pathname === '/chat', `the page navigated to ${page.url()}`);
    await page.screenshot({ path: path.join(shotDir, 'desktop-hostile.png') });
    f.done();
  });

  await check('an LLM failure shows a readable message inline', async () => {
    await send('please e2e-fail now');
    const alert = page.locator('main [role="alert"]');
    await alert.waitFor();
    const text = await alert.innerText();
    expect(/language model/i.test(text), `the message is ${JSON.stringify(text)}`);
    expect(!/^\s*[{[]/.test(text), `the message is raw JSON: ${text}`);
  });

  const secondTitle = 'second conversation for e2e';
  const newTitle = `Renamed by e2e ${Date.now().toString(36)}`;
  await check('rename a conversation (kept after a reload)', async () => {
    await page.getByRole('button', { name: '+ New chat' }).click();
    await send(secondTitle);
    await convItem(secondTitle).waitFor();
    await page.getByRole('button', { name: `Rename “${secondTitle}”` }).click();
    const input = page.getByRole('textbox', { name: 'New title' });
    await input.fill(newTitle);
    await input.press('Enter');
    await waitOr(convItem(newTitle).waitFor(), 'the new title is not listed');
    expect((await convItem(secondTitle).count()) === 0, 'the old title is still listed');
    await waitOr(
      page.waitForFunction((t) => document.title.includes(t), newTitle),
      `the page title is "${await page.title()}", not the new title`,
    );
    await page.reload();
    await waitOr(convItem(newTitle).waitFor(), 'the new title is gone after a reload (not saved)');
  });

  await check('delete a conversation (gone after a reload)', async () => {
    const victim = 'conversation to delete';
    await page.getByRole('button', { name: '+ New chat' }).click();
    await send(victim);
    await convItem(victim).waitFor();
    const before = await page.locator('li.conv').count();
    await page.getByRole('button', { name: `Delete “${victim}”` }).click();
    const confirming = page.locator('li.conv.confirming');
    await confirming.getByRole('button', { name: 'Delete', exact: true }).click();
    await confirming.waitFor({ state: 'detached' });
    expect((await convItem(victim).count()) === 0, 'the deleted conversation is still listed');
    const after = await page.locator('li.conv').count();
    expect(after === before - 1, `the list went from ${before} to ${after} conversations`);
    expect(
      (await page.locator('.msg').count()) === 0,
      'the messages of the deleted conversation are still shown',
    );
    await page.reload();
    await page.locator('li.conv').first().waitFor();
    expect((await convItem(victim).count()) === 0, 'the deleted conversation came back after a reload');
  });

  await check('stop a streaming answer with the Stop button', async () => {
    await page.getByRole('button', { name: '+ New chat' }).click();
    await send('a long one: e2e-slow', { waitDone: false });
    await waitOr(stopButton().waitFor(), 'no Stop button while the answer streams');
    await waitOr(lastAssistant().filter({ hasText: 'word2' }).waitFor(), 'the slow answer does not stream in');
    await stopButton().click();
    await waitOr(stopButton().waitFor({ state: 'detached', timeout: 3000 }), 'still streaming 3 s after Stop');
    await page.getByRole('button', { name: 'Send' }).waitFor();
    const atStop = await lastAssistant().innerText();
    await page.waitForTimeout(1000); // the fake sends a word every 300 ms
    const later = await lastAssistant().innerText();
    expect(later === atStop, 'the answer kept growing after Stop');
    expect(!later.includes('word199'), 'the whole answer arrived');
    expect(later.includes('Stopped.'), 'the stopped answer is not marked as stopped');
    // The conversation of a stopped first answer exists and is selected.
    await page.locator('li.conv.active .conv-title', { hasText: 'a long one' }).waitFor();
  });

  await check('narrow screen (375 px): no sideways scrolling, list behind a button', async () => {
    const token = await page.evaluate(() => localStorage.getItem('chat.token'));
    mobile = await browser.newContext({
      viewport: { width: 375, height: 740 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    const m = await mobile.newPage();
    watch(m);
    await m.goto(`${baseUrl}/`);
    await noHorizontalScroll(m);
    await m.screenshot({ path: path.join(shotDir, 'mobile-login.png') });
    await m.evaluate((t) => localStorage.setItem('chat.token', t), token);
    await m.goto(`${baseUrl}/chat`);
    await m.getByRole('textbox', { name: 'Message' }).waitFor();
    const toggle = m.getByRole('button', { name: 'Conversations' });
    expect(await toggle.isVisible(), 'no Conversations button on a narrow screen');
    expect(!(await m.locator('aside').isVisible()), 'the conversation list is open on a narrow screen');
    await toggle.click();
    await m.locator('aside').waitFor({ state: 'visible' });
    await m.screenshot({ path: path.join(shotDir, 'mobile-nav.png') });
    // An answer with a table and a long code line must not widen the page.
    await m.getByRole('button', { name: '+ New chat' }).click();
    expect(!(await m.locator('aside').isVisible()), 'choosing from the list did not close it');
    await m.getByRole('textbox', { name: 'Message' }).fill('mobile e2e-markdown');
    await m.getByRole('textbox', { name: 'Message' }).press('Enter');
    await m.locator('.msg.assistant pre code').waitFor();
    await m.getByRole('button', { name: 'Stop', exact: true }).waitFor({ state: 'detached', timeout: 20_000 });
    await noHorizontalScroll(m);
    await m.screenshot({ path: path.join(shotDir, 'mobile-chat.png') });
  });

  await check('no script errors in the pages', async () => {
    expect(pageErrors.length === 0, pageErrors.join('\n'));
  });
} catch (err) {
  exitCode = 1;
  console.error(err.message);
  await page.screenshot({ path: path.join(shotDir, 'failure.png') }).catch(() => {});
  console.error(`screenshot of the failure: ${path.join(shotDir, 'failure.png')}`);
} finally {
  await mobile?.close().catch(() => {});
  await browser.close().catch(() => {});
}
console.log(`e2e: ${passed} passed, ${exitCode ? 1 : 0} failed${skipped ? `, ${skipped} skipped` : ''}`);
console.log(`screenshots: ${shotDir}`);
process.exit(exitCode);
