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
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 60em; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
  code, .addr { font-family: ui-monospace, monospace; font-size: .95em; }
  .sub { color: #666; font-weight: normal; }
  .tiles { display: flex; flex-wrap: wrap; gap: .6em; margin-top: 1em; }
  .tile { border: 1px solid #ddd; border-radius: 6px; padding: .35em .7em; min-width: 5em; }
  .tile .label { display: block; color: #666; font-size: .85em; }
  .tile .value { font-size: 1.25em; font-variant-numeric: tabular-nums; }
  table { border-collapse: collapse; }
  th, td { border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; }
  th { background: #f4f4f4; font-weight: 600; }
  th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.leader td { background: #e8f6ee; }
  tr.leader td:first-child { font-weight: bold; }
  .badge { background: #0a5; color: #fff; border-radius: 4px; padding: 0 .4em; font-size: .85em; }
  .good { color: #0a5; }
  .bad, .stale { color: #b00; }
  .none { color: #999; }
  /* What the node said last, greyed out while it does not answer. */
  body.unreachable .tiles, body.unreachable table { opacity: .4; }
</style>
</head>
<body>
<h1>cairn node <span id="node-id">?</span></h1>
<div class="sub">this page refreshes every ${STATUS_PAGE_REFRESH_MS / 1000} s from <code>/status.json</code>; <span id="updated">loading</span></div>
<div class="tiles">
  <div class="tile"><span class="label">role</span><span class="value" id="role">?</span></div>
  <div class="tile"><span class="label">term</span><span class="value" id="term">?</span></div>
  <div class="tile"><span class="label">leader</span><span class="value" id="leader">?</span></div>
  <div class="tile"><span class="label">commit index</span><span class="value" id="commit">?</span></div>
  <div class="tile"><span class="label">applied index</span><span class="value" id="applied">?</span></div>
  <div class="tile"><span class="label">last index</span><span class="value" id="last">?</span></div>
  <div class="tile"><span class="label">snapshot index</span><span class="value" id="snapshot">?</span></div>
  <div class="tile"><span class="label">ready</span><span class="value" id="ready">?</span></div>
</div>
<h2>Members</h2>
<table>
  <thead><tr><th>id</th><th>role</th><th>peer address</th><th>client address</th><th>leader</th><th class="num">match index</th><th class="num">lag (entries)</th></tr></thead>
  <tbody id="members"></tbody>
</table>
<h2>Recent leader changes <span class="sub">(seen by this node, newest first)</span></h2>
<table>
  <thead><tr><th>when (UTC)</th><th class="num">term</th><th>leader</th></tr></thead>
  <tbody id="leader-changes"></tbody>
</table>
<script>
function text(id, value, tone) {
  const element = document.getElementById(id);
  element.textContent = String(value);
  element.classList.remove('good', 'bad', 'none');
  if (tone) element.classList.add(tone);
}
function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === undefined ? '-' : String(value);
  if (className) td.className = className;
}
async function refresh() {
  try {
    const response = await fetch('/status.json', { cache: 'no-store' });
    const s = await response.json();
    text('node-id', s.id); text('role', s.role, s.role === 'leader' ? 'good' : ''); text('term', s.term);
    text('leader', s.leader ? 'node ' + s.leader : 'none known', s.leader ? '' : 'bad');
    text('commit', s.commitIndex); text('applied', s.appliedIndex); text('last', s.lastIndex);
    text('snapshot', s.snapshotIndex); text('ready', s.ready ? 'yes' : 'no: ' + s.notReady, s.ready ? 'good' : 'bad');
    const members = document.getElementById('members');
    members.replaceChildren();
    for (const m of s.members) {
      const row = members.insertRow();
      row.dataset.id = m.id;
      if (m.leader) row.className = 'leader';
      cell(row, m.id); cell(row, m.role); cell(row, m.peerAddr, 'addr'); cell(row, m.clientAddr || '', 'addr');
      const leaderCell = row.insertCell();
      if (m.leader) leaderCell.appendChild(Object.assign(document.createElement('span'), { className: 'badge', textContent: 'leader' }));
      cell(row, m.matchIndex, 'num'); cell(row, m.lagEntries, 'num');
    }
    const changes = document.getElementById('leader-changes');
    changes.replaceChildren();
    for (const c of s.leaderChanges.slice().reverse()) {
      const row = changes.insertRow();
      cell(row, c.at); cell(row, c.term, 'num'); cell(row, c.leader ? 'node ' + c.leader : 'none', c.leader ? '' : 'none');
    }
    const updated = document.getElementById('updated');
    updated.textContent = 'updated ' + new Date().toLocaleTimeString();
    updated.className = '';
    document.body.classList.remove('unreachable');
  } catch (err) {
    const updated = document.getElementById('updated');
    updated.textContent = 'this node does not answer (' + err.message + ')';
    updated.className = 'stale';
    document.body.classList.add('unreachable');
  }
}
refresh();
setInterval(refresh, ${STATUS_PAGE_REFRESH_MS});
</script>
</body>
</html>
`;
