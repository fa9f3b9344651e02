/**
 * The status page at `/` on the HTTP port: one small HTML page, no build step, that reads
 * `/status.json` every STATUS_PAGE_REFRESH_MS and shows what this node knows of the cluster.
 * Element ids (`role`, `leader`, `members`, ...) are what test/integration/status-page.test.ts
 * reads.
 */
export const STATUS_PAGE_REFRESH_MS = 1000;

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cairn node status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  .sub { color: #666; margin-bottom: 1em; }
  table { border-collapse: collapse; margin: .5em 0 1.2em; }
  th, td { border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; }
  th { background: #f4f4f4; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .leader { font-weight: bold; color: #0a5; }
  .stale { color: #b00; }
  dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
  dt { color: #666; }
</style>
</head>
<body>
<h1>cairn node <span id="node-id">?</span></h1>
<div class="sub">this page refreshes every ${STATUS_PAGE_REFRESH_MS / 1000} s from <code>/status.json</code>; <span id="updated">loading</span></div>
<dl>
  <dt>role</dt><dd id="role">?</dd>
  <dt>term</dt><dd id="term">?</dd>
  <dt>leader</dt><dd id="leader">?</dd>
  <dt>commit index</dt><dd id="commit">?</dd>
  <dt>applied index</dt><dd id="applied">?</dd>
  <dt>last index</dt><dd id="last">?</dd>
  <dt>snapshot index</dt><dd id="snapshot">?</dd>
  <dt>ready</dt><dd id="ready">?</dd>
</dl>
<h2>Members</h2>
<table>
  <thead><tr><th>id</th><th>role</th><th>peer address</th><th>client address</th><th>leader</th><th>match index</th><th>lag (entries)</th></tr></thead>
  <tbody id="members"></tbody>
</table>
<h2>Recent leader changes (seen by this node)</h2>
<table>
  <thead><tr><th>when</th><th>term</th><th>leader</th></tr></thead>
  <tbody id="leader-changes"></tbody>
</table>
<script>
const text = (id, value) => { document.getElementById(id).textContent = String(value); };
function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === undefined ? '-' : String(value);
  if (className) td.className = className;
}
async function refresh() {
  try {
    const response = await fetch('/status.json', { cache: 'no-store' });
    const s = await response.json();
    text('node-id', s.id); text('role', s.role); text('term', s.term);
    text('leader', s.leader ? 'node ' + s.leader : 'none known');
    text('commit', s.commitIndex); text('applied', s.appliedIndex); text('last', s.lastIndex);
    text('snapshot', s.snapshotIndex); text('ready', s.ready ? 'yes' : 'no: ' + s.notReady);
    const members = document.getElementById('members');
    members.replaceChildren();
    for (const m of s.members) {
      const row = members.insertRow();
      row.dataset.id = m.id;
      if (m.leader) row.className = 'leader';
      cell(row, m.id); cell(row, m.role); cell(row, m.peerAddr); cell(row, m.clientAddr || '');
      cell(row, m.leader ? 'leader' : ''); cell(row, m.matchIndex, 'num'); cell(row, m.lagEntries, 'num');
    }
    const changes = document.getElementById('leader-changes');
    changes.replaceChildren();
    for (const c of s.leaderChanges.slice().reverse()) {
      const row = changes.insertRow();
      cell(row, c.at); cell(row, c.term); cell(row, c.leader ? 'node ' + c.leader : 'none');
    }
    const updated = document.getElementById('updated');
    updated.textContent = 'updated ' + new Date().toLocaleTimeString();
    updated.className = '';
  } catch (err) {
    const updated = document.getElementById('updated');
    updated.textContent = 'this node does not answer (' + err.message + ')';
    updated.className = 'stale';
  }
}
refresh();
setInterval(refresh, ${STATUS_PAGE_REFRESH_MS});
</script>
</body>
</html>
`;
