// The dashboard in a real browser: Debian's Chromium driven by
// playwright-core. Started by the e2e test `dashboard` (tests/e2e/dashboard.rs),
// which runs a daemon with real workflows and passes what it made:
//   FLOWHOST_URL, FLOWHOST_TOKEN, FLOWHOST_SHOTS (where screenshots go),
//   FLOWHOST_CASE (JSON: ids of the executions and the job to act on),
//   PLAYWRIGHT_CORE (the package's folder), CHROMIUM (the browser).
// Exits 0 when every step held; otherwise prints the step that failed.
'use strict';

const path = require('path');
const fs = require('fs');
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const base = process.env.FLOWHOST_URL;
const token = process.env.FLOWHOST_TOKEN;
const shots = process.env.FLOWHOST_SHOTS;
const c = JSON.parse(process.env.FLOWHOST_CASE);
const WAIT = 20000;

fs.mkdirSync(shots, { recursive: true });

async function api(p, method = 'GET', body) {
  const res = await fetch(base + p, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

function check(cond, what) {
  if (!cond) throw new Error(`not so: ${what}`);
}

async function step(name, fn) {
  process.stdout.write(`step: ${name}\n`);
  await fn();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const errors = [];
  const watch = (page) => {
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console error: ${m.text()}`);
    });
  };
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, colorScheme: 'light' });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  watch(page);
  const shot = (name, p = page) => p.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  try {
    await step('without a token the login shows and no data', async () => {
      await page.goto(base + '/');
      await page.waitForSelector('#login');
      check(await page.locator('#executions').count() === 0, 'no executions list before signing in');
      await shot('login');
    });

    await step('a wrong token is refused and shows no data', async () => {
      await page.fill('#token', 'not-the-token');
      await page.click('#signin');
      await page.waitForFunction(() => document.querySelector('#login-error').textContent.includes('not the daemon'));
      check(await page.locator('#executions').count() === 0, 'no executions list with a wrong token');
      await shot('login-refused');
    });

    await step('the right token opens the list of the daemon\u2019s executions', async () => {
      await page.fill('#token', token);
      await page.click('#signin');
      await page.waitForSelector('#executions-table');
      await page.waitForSelector('#live[data-state="on"]');
      for (const id of [c.waiting, c.cancel, ...c.finished]) {
        await page.waitForSelector(`tr[data-id="${id}"]`);
      }
      const total = await page.textContent('[data-count="all"]');
      check(Number(total.replace(/,/g, '')) === c.roots, `the count of all executions is ${c.roots} (shows ${total})`);
      await shot('executions');
    });

    await step('the list updates when an execution finishes', async () => {
      const cell = `tr[data-id="${c.waiting}"] [data-col="status"] [data-status]`;
      check(await page.getAttribute(cell, 'data-status') === 'waiting', 'it waits first');
      const done = async () => Number((await page.textContent('[data-count="done"]')).replace(/,/g, ''));
      const before = await done();
      await api(`/workflows/${c.waiting}/signal/answer`, 'POST', { ok: true });
      await page.waitForSelector(`tr[data-id="${c.waiting}"] [data-status="done"]`);
      // The counts follow (from the store's counters).
      await page.waitForFunction((n) => document.querySelector('[data-count="done"]').textContent === String(n), before + 1);
      check(await done() === before + 1, 'one more done');
      await shot('executions-updated');
    });

    await step('a new execution is announced without moving the list', async () => {
      const before = await page.locator('#executions-table tbody tr').count();
      await api('/workflows', 'POST', { machine: 'double', input: { n: 21 } });
      await page.waitForSelector('#show-new');
      check(await page.locator('#executions-table tbody tr').count() === before, 'rows stay until asked');
      await page.click('#show-new');
      await page.waitForFunction((n) => document.querySelectorAll('#executions-table tbody tr').length === n + 1, before);
    });

    await step('a filtered list shows only what matches', async () => {
      await page.selectOption('#f-status', 'waiting');
      await page.click('#f-apply');
      await page.waitForFunction(() => location.hash.includes('status=waiting'));
      await page.waitForSelector(`tr[data-id="${c.cancel}"]`);
      const statuses = await page.$$eval('#executions-table tbody [data-status]', (els) => els.map((e) => e.dataset.status));
      check(statuses.length > 0 && statuses.every((x) => x === 'waiting'), `only waiting rows (got ${statuses})`);
      check(await page.locator(`tr[data-id="${c.waiting}"]`).count() === 0, 'the finished one is not listed');
      // The keyboard: `/` goes to the id filter.
      await page.locator('body').press('/');
      check(await page.evaluate(() => document.activeElement.id) === 'f-prefix', '/ focuses the id filter');
      await page.keyboard.type(c.cancel.slice(0, 6));
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => location.hash.includes('prefix='));
      await page.waitForSelector(`tr[data-id="${c.cancel}"]`);
      await shot('executions-filtered');
    });

    await step('the execution page draws the diagram with the current state and the timeline', async () => {
      await page.click(`tr[data-id="${c.cancel}"] a`);
      await page.waitForSelector('#diagram-svg');
      await page.waitForSelector(`.node.current[data-state="${c.cancel_state}"]`);
      for (const st of c.cancel_visited) {
        await page.waitForSelector(`.node.visited[data-state="${st}"]`);
      }
      const rows = await page.$$eval('#timeline tbody tr', (els) => els.map((e) => e.dataset.state));
      check(c.cancel_visited.every((st) => rows.includes(st)), `the timeline has ${c.cancel_visited} (has ${rows})`);
      await page.click('#input summary');
      await page.waitForSelector('#input .tree');
      await shot('execution');
    });

    await step('cancel from the page cancels the execution', async () => {
      await page.click('#act-cancel');
      await page.waitForSelector('#confirm[open]');
      await page.click('#confirm-yes');
      await page.waitForSelector('#x-status [data-status="cancelled"]');
      const d = await api(`/workflows/${c.cancel}`);
      check(d.status === 'cancelled', `the API says cancelled (says ${d.status})`);
      await shot('execution-cancelled');
    });

    await step('a signal with a JSON payload is sent from the page; bad JSON is refused first', async () => {
      await page.goto(`${base}/#/executions/${c.signal}`);
      await page.waitForSelector('#x-status [data-status="waiting"]');
      await page.click('#act-signal');
      await page.waitForSelector('#confirm[open]');
      check(await page.inputValue('#signal-channel') === 'answer', 'the channel it waits on is filled in');
      await page.fill('#signal-payload', '{"ok": tru');
      await page.click('#confirm-yes');
      await page.waitForFunction(() => document.querySelector('#confirm-error').textContent.includes('not JSON'));
      check(await page.locator('#confirm[open]').count() === 1, 'the dialog stays open');
      check((await api(`/workflows/${c.signal}`)).status === 'waiting', 'nothing was sent');
      await page.fill('#signal-payload', '{"ok": true}');
      await page.click('#confirm-yes');
      await page.waitForSelector('#x-status [data-status="done"]');
      const d = await api(`/workflows/${c.signal}`);
      check(d.status === 'done', `the API says done (says ${d.status})`);
    });

    await step('a failed execution shows its failed state and is retried from the page', async () => {
      await page.goto(`${base}/#/executions/${c.failed}`);
      await page.waitForSelector('.node.failed[data-state="call"]');
      await page.waitForSelector('#error .tree');
      check((await page.textContent('#x-error')).includes('refused on purpose'), 'the error is shown');
      await shot('execution-failed');
      await page.click('#act-retry');
      await page.waitForSelector('#confirm[open]');
      await page.click('#confirm-yes');
      await page.waitForFunction(() => document.querySelector('#toast').textContent.includes('Retrying'));
      for (let i = 0; ; i++) {
        const { events } = await api(`/workflows/${c.failed}/history`);
        if (events.some((e) => e.event.event === 'retried')) break;
        check(i < 200, 'the retry shows in its history');
        await new Promise((r) => setTimeout(r, 50));
      }
    });

    await step('a fan-out shows the progress of its children', async () => {
      await page.goto(`${base}/#/executions/${c.fanout}`);
      await page.waitForSelector('#children-progress');
      await page.waitForSelector('.node.visited, .node.current');
      await shot('execution-children');
    });

    await step('a poisoned job is requeued from the pools page', async () => {
      await page.click('a[data-nav="pools"]');
      const pool = `section[data-pool="${c.pool}"]`;
      await page.waitForSelector(`${pool} tr[data-job="${c.job}"]`);
      check((await page.textContent(`${pool} tr[data-job="${c.job}"]`)).includes('poisoned'), 'the job shows poisoned with its error');
      await shot('pools');
      await page.click(`${pool} [data-requeue="${c.job}"]`);
      await page.waitForSelector('#confirm[open]');
      await page.click('#confirm-yes');
      await page.waitForFunction(() => document.querySelector('#toast').textContent.includes('Requeued 1 job'));
      const { jobs } = await api(`/pools/${c.pool}/jobs?status=pending`);
      check(jobs.some((j) => j.id === c.job), 'the API lists the job pending again');
    });

    await step('workers and plugins show', async () => {
      await page.click('a[data-nav="workers"]');
      await page.waitForSelector('#workers-table tr[data-worker]');
      await shot('workers');
      await page.click('a[data-nav="plugins"]');
      await page.waitForSelector('#plugins-table tr[data-plugin="echo"]');
      await shot('plugins');
    });

    await step('dark mode', async () => {
      const dark = await browser.newContext({ viewport: { width: 1360, height: 900 }, colorScheme: 'dark' });
      await dark.addInitScript((t) => sessionStorage.setItem('flowhost.token', t), token);
      const p = await dark.newPage();
      p.setDefaultTimeout(WAIT);
      watch(p);
      await p.goto(`${base}/#/executions/${c.fanout}`);
      await p.waitForSelector('#diagram-svg');
      await shot('execution-dark', p);
      await p.goto(`${base}/#/`);
      await p.waitForSelector('#executions-table');
      await shot('executions-dark', p);
      await dark.close();
    });

    await step('signing out shows the login again', async () => {
      await page.click('#signout');
      await page.waitForSelector('#login');
      check(await page.locator('#executions, #pools, #workers, #plugins').count() === 0, 'no data after signing out');
    });

    check(errors.length === 0, `no errors in the browser console:\n  ${errors.join('\n  ')}`);
    process.stdout.write('dashboard: every step held\n');
  } catch (e) {
    try {
      await shot('failure');
    } catch {}
    process.stdout.write(`FAILED: ${e.message}\n`);
    if (errors.length) process.stdout.write(`browser errors:\n  ${errors.join('\n  ')}\n`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
