import type { Page } from 'playwright-core';
import { httpGet, HttpUrls, launchChromium, prepareHttpCluster, Sample, sampleValue, scrape } from '../support/http-cluster';
import { ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(90_000);

/** How long the page may take to show what the cluster did (an election included). */
const PAGE_UPDATE_TIMEOUT_MS = 30_000;
const PUTS = 5;

/**
 * The HTTP port (--http-addr) of three real `cairn serve` processes: the probes, /metrics
 * before and after writes, and the status page in headless chromium following a leader
 * change by itself. The tests share one cluster and run in order (the later ones kill nodes).
 */
/** The little of the browser's document the page predicates use (the tests compile without the DOM types). */
interface PageDocument {
  document: { querySelector(selector: string): { textContent: string | null } | null };
}

describe('the HTTP port of a 3-node cluster', () => {
  let cluster: ProcessCluster;
  let urls: HttpUrls;
  const url = (id: number) => urls.get(id)!;

  beforeAll(async () => {
    ({ cluster, urls } = await prepareHttpCluster(3));
    for (const node of cluster.nodes) cluster.spawn(node);
    await cluster.waitForLeader();
  });
  afterAll(() => cluster.stop());

  test('/healthz and /readyz answer 200 on every node once ready; an unknown path 404, a POST 405', async () => {
    for (const node of cluster.nodes) {
      await waitFor(`node ${node.id} ready`, async () => (await httpGet(`${url(node.id)}/readyz`)).status === 200);
      expect(await httpGet(`${url(node.id)}/healthz`)).toMatchObject({ status: 200, body: 'ok\n' });
      expect(await httpGet(`${url(node.id)}/readyz`)).toMatchObject({ status: 200, body: 'ready\n' });
    }
    const missing = await httpGet(`${url(1)}/no-such-page`);
    expect(missing.status).toBe(404);
    expect(missing.body).toContain('no such page: /no-such-page');
    expect((await httpGet(`${url(1)}/metrics`, 'POST')).status).toBe(405);
    const page = await httpGet(`${url(1)}/`);
    expect(page).toMatchObject({ status: 200, contentType: 'text/html; charset=utf-8' });
    expect(page.body).toContain('id="members"');
  });

  test('/metrics: writes raise the leader\'s proposal, fsync, commit and request figures; roles; every name starts with cairn_', async () => {
    const leader = await cluster.waitForLeader();
    const before = await scrape(url(leader));
    const client = cluster.client([leader]);
    for (let i = 0; i < PUTS; i++) await client.put(Buffer.from(`metrics-${i}`), Buffer.from('v'));
    const after = await scrape(url(leader));

    const grew = (name: string, labels: Record<string, string> = {}) => ({
      before: sampleValue(before, name, labels) ?? 0,
      after: sampleValue(after, name, labels) ?? 0,
    });
    const proposals = grew('cairn_proposals_total', { outcome: 'ok' });
    expect(proposals.after).toBeGreaterThanOrEqual(proposals.before + PUTS);
    const puts = grew('cairn_client_requests_total', { method: '/cairn.kv.v1.KV/Put', code: 'OK' });
    expect(puts.after).toBeGreaterThanOrEqual(puts.before + PUTS);
    const commit = grew('cairn_commit_index');
    expect(commit.after).toBeGreaterThanOrEqual(commit.before + PUTS);
    const fsyncs = grew('cairn_fsync_duration_seconds_count');
    expect(fsyncs.after).toBeGreaterThan(fsyncs.before);

    for (const node of cluster.nodes) {
      const samples = node.id === leader ? after : await scrape(url(node.id));
      expect(sampleValue(samples, 'cairn_role', { role: 'leader' })).toBe(node.id === leader ? 1 : 0);
      expect(sampleValue(samples, 'cairn_role', { role: 'follower' })).toBe(node.id === leader ? 0 : 1);
      expect(metricNamesWithoutPrefix(samples)).toEqual([]);
      // prom-client's process metrics are there too, under the same prefix.
      expect(sampleValue(samples, 'cairn_process_resident_memory_bytes')).toBeGreaterThan(0);
    }
  });

  test('a follower\'s status page shows the members and the leader, and follows a new leader after kill -9 without a reload', async () => {
    const browser = await launchChromium();
    try {
      const oldLeader = await cluster.waitForLeader();
      const follower = cluster.nodes.find((n) => n.id !== oldLeader)!.id;
      const page = await browser.newPage();
      const response = await page.goto(`${url(follower)}/`);
      expect(response?.status()).toBe(200);

      await waitForPage(page, 'three member rows and a leader row', (want) => rows('#members').length === 3 && leaderRowId() === want, String(oldLeader));
      expect(await page.locator('#node-id').textContent()).toBe(String(follower));
      expect(await page.locator('#role').textContent()).toBe('follower');
      expect(await page.locator('#leader').textContent()).toBe(`node ${oldLeader}`);
      expect(await page.locator('#members tr.leader').count()).toBe(1);
      expect(await page.locator('#members tr').evaluateAll((trs) => trs.map((tr) => (tr as unknown as { dataset: { id: string } }).dataset.id))).toEqual(['1', '2', '3']);
      const changesBefore = await page.locator('#leader-changes tr').count();
      expect(changesBefore).toBeGreaterThanOrEqual(1);
      // A navigation would drop this: its survival proves the page updated itself.
      await page.evaluate(() => ((globalThis as unknown as { loadedOnce: boolean }).loadedOnce = true));

      await cluster.kill(oldLeader, 'SIGKILL');
      await waitForPage(
        page,
        'a new leader on the page',
        (old) => {
          const id = leaderRowId();
          return id !== undefined && id !== old && byId('leader') === `node ${id}`;
        },
        String(oldLeader),
      );
      await waitForPage(page, 'the leader-changes table to grow', (count) => rows('#leader-changes').length > Number(count), String(changesBefore));
      expect(await page.evaluate(() => (globalThis as unknown as { loadedOnce?: boolean }).loadedOnce)).toBe(true);
      const newLeader = Number(await page.locator('#members tr.leader').getAttribute('data-id'));
      expect(newLeader).toBe(await cluster.waitForLeader());
      expect(await page.locator('#members tr').count()).toBe(3);
      // The table may show the leader's loss first and the new leader one poll later.
      await waitForPage(page, 'the newest leader change to name the new leader', (id) => ((globalThis as unknown as PageDocument).document.querySelector('#leader-changes tr')?.textContent ?? '').includes(`node ${id}`), String(newLeader));
      expect(await page.locator('#leader-changes tr').first().textContent()).toContain(`node ${newLeader}`);
    } finally {
      await browser.close();
    }
  });

  test('/readyz turns 503 on a node whose peers are all down (no leader known)', async () => {
    const running = cluster.nodes.filter((n) => n.process).map((n) => n.id);
    const [survivor, ...others] = running;
    for (const id of others) await cluster.kill(id, 'SIGKILL');
    const notReady = await waitFor(`node ${survivor} not ready`, async () => {
      const readyz = await httpGet(`${url(survivor!)}/readyz`);
      return readyz.status === 503 ? readyz : undefined;
    }, PAGE_UPDATE_TIMEOUT_MS);
    expect(notReady.body).toBe('not ready: no leader known\n');
    expect((await httpGet(`${url(survivor!)}/healthz`)).status).toBe(200);
  });
});

function metricNamesWithoutPrefix(samples: readonly Sample[]): string[] {
  return [...new Set(samples.map((s) => s.name).filter((name) => !name.startsWith('cairn_')))];
}

/**
 * Waits until `predicate(arg)` holds in the page. The predicate runs in the browser, so it
 * may use only the page helpers installed by installHelpers (rows, leaderRowId, byId).
 */
async function waitForPage(page: Page, what: string, predicate: (arg: string) => boolean, arg: string): Promise<void> {
  await page.evaluate(installHelpers);
  try {
    await page.waitForFunction(predicate, arg, { timeout: PAGE_UPDATE_TIMEOUT_MS, polling: 100 });
  } catch (err) {
    const shown = await page.locator('body').innerText().catch(() => '(page gone)');
    throw new Error(`the status page did not show ${what} within ${PAGE_UPDATE_TIMEOUT_MS} ms: ${(err as Error).message}\npage text:\n${shown}`);
  }
}

/* Page-side helpers: declared here for the compiler, defined in the page by installHelpers. */
declare function rows(tbodySelector: string): unknown[];
declare function leaderRowId(): string | undefined;
declare function byId(id: string): string | null;

/** Runs in the browser: defines rows, leaderRowId and byId on the page's global object. */
function installHelpers(): void {
  const page = globalThis as unknown as {
    document: { querySelectorAll(s: string): ArrayLike<{ dataset: Record<string, string> }>; querySelector(s: string): { dataset: Record<string, string> } | null; getElementById(id: string): { textContent: string | null } | null };
    rows: typeof rows;
    leaderRowId: typeof leaderRowId;
    byId: typeof byId;
  };
  page.rows = (selector) => Array.from(page.document.querySelectorAll(`${selector} tr`));
  page.leaderRowId = () => page.document.querySelector('#members tr.leader')?.dataset.id;
  page.byId = (id) => page.document.getElementById(id)?.textContent ?? null;
}
