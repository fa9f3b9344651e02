/**
 * Makes docs/status-page.png: the leader's status page of a local 3-node cluster after a few
 * writes, in headless Debian chromium (playwright-core). Not run in CI.
 *
 *   npm run build && node dist/scripts/screenshot-status-page.js [OUT.png]
 */
import { resolve } from 'node:path';
import { launchChromium, prepareHttpCluster } from '../test/support/http-cluster';

const WRITES = 200;
const VIEWPORT = { width: 1000, height: 400 };
const PAGE_TIMEOUT_MS = 20_000;

async function main(): Promise<void> {
  const out = resolve(process.argv[2] ?? resolve(__dirname, '../../docs/status-page.png'));
  const { cluster, urls } = await prepareHttpCluster(3);
  const browser = await launchChromium();
  try {
    for (const node of cluster.nodes) cluster.spawn(node);
    const leader = await cluster.waitForLeader();
    const client = cluster.client();
    for (let i = 0; i < WRITES; i++) await client.put(Buffer.from(`screenshot/${i}`), Buffer.from(`value ${i}`));
    const page = await browser.newPage({ viewport: VIEWPORT, deviceScaleFactor: 1 });
    await page.goto(`${urls.get(leader)}/`);
    await page.waitForFunction(
      () => {
        const doc = (globalThis as unknown as { document: { querySelectorAll(s: string): { length: number }; getElementById(id: string): { textContent: string | null } } }).document;
        return doc.querySelectorAll('#members tr').length === 3 && doc.getElementById('ready').textContent === 'yes';
      },
      undefined,
      { timeout: PAGE_TIMEOUT_MS },
    );
    await page.screenshot({ path: out, fullPage: true });
    console.log(`wrote ${out} (leader: node ${leader}, ${WRITES} writes)`);
  } finally {
    await browser.close();
    await cluster.stop();
  }
}

main().catch((err: unknown) => {
  console.error((err as Error).stack ?? err);
  process.exit(1);
});
