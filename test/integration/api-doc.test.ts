import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ERROR_CODE_METADATA } from '../../src/server/status';
import { ProcessCluster, freePort, waitFor } from '../support/process-cluster';

/**
 * Runs every grpcurl example of docs/api.md against a real 3-node cluster, through buf curl
 * (grpcurl is not installed on the CI machine), and compares what it prints with the output
 * the doc shows after the example. The rules are the ones docs/api.md states ("The examples,
 * and how they are checked").
 */

jest.setTimeout(120_000);

const API_DOC = resolve(__dirname, '../../docs/api.md');
const BUF = resolve(__dirname, '../../node_modules/.bin/buf');
/**
 * The production tick (the harness's own is 50 ms): an election timeout of 1-2 s keeps node 1
 * leading through the run on a loaded machine, as the examples expect.
 */
const TICK_ARGS = ['--tick-ms', '100'];
/** How long one buf curl call may take before the example counts as failed. */
const BUF_CALL_TIMEOUT_MS = 20_000;

/** grpcurl subcommands buf curl cannot do: their examples are skipped (test/unit/reflection.test.ts checks what `describe` shows). */
const SKIPPED_SUBCOMMANDS = new Set(['describe']);

/** Answer fields whose value differs from run to run: present, but not compared. */
const VARYING_FIELDS = new Set([
  'revision', 'raftTerm', 'term', 'createRevision', 'modRevision', 'clusterId', 'commitIndex', 'appliedIndex',
  'lastIndex', 'matchIndex', 'nextIndex', 'state', 'snapshotIndex', 'firstIndex',
]);
/** Varying only at the top of a message: Status's `version` is the server's (a key's `version`, deeper down, is compared). */
const VARYING_TOP_LEVEL_FIELDS = new Set(['version']);

/** A printed string ending in this stands for any string that starts with what precedes it. */
const PREFIX_MARK = '...';

/** The nodes the doc's examples address: node N at 127.0.0.1:700N (clients) and 127.0.0.1:710N (peers). */
const DOC_NODE_IDS = [1, 2, 3];
/** The doc's address of a member that is added but never started. */
const DOC_ABSENT_PEER_ADDR = '127.0.0.1:7104';
const docClientAddr = (id: number) => `127.0.0.1:${7000 + id}`;
const docPeerAddr = (id: number) => `127.0.0.1:${7100 + id}`;

interface FencedBlock {
  lang: string;
  /** 1-based line of the opening fence. */
  line: number;
  endLine: number;
  body: string[];
}

interface Example {
  line: number;
  command: string;
  output?: FencedBlock;
}

/** The fenced blocks of a markdown text, in order. */
function fencedBlocks(markdown: string): FencedBlock[] {
  const lines = markdown.split('\n');
  const blocks: FencedBlock[] = [];
  let open: FencedBlock | undefined;
  lines.forEach((text, index) => {
    const fence = /^```(\S*)\s*$/.exec(text);
    if (!open && fence) open = { lang: fence[1]!, line: index + 1, endLine: 0, body: [] };
    else if (open && /^```\s*$/.test(text)) {
      open.endLine = index + 1;
      blocks.push(open);
      open = undefined;
    } else if (open) open.body.push(text);
  });
  if (open) throw new Error(`docs/api.md: the block opened at line ${open.line} is never closed`);
  return blocks;
}

/**
 * Every grpcurl line of the doc's sh blocks, with the output block that follows its sh block
 * (a json or text block separated from it by blank lines only). A block with an output holds
 * one command, so the output belongs to it.
 */
function examplesOf(markdown: string): Example[] {
  const lines = markdown.split('\n');
  const blocks = fencedBlocks(markdown);
  const examples: Example[] = [];
  blocks.forEach((block, i) => {
    if (block.lang !== 'sh') return;
    const next = blocks[i + 1];
    const between = next ? lines.slice(block.endLine, next.line - 1) : [];
    const output = next && ['json', 'text'].includes(next.lang) && between.every((l) => l.trim() === '') ? next : undefined;
    const commands = block.body.map((text, j) => ({ text: text.trim(), line: block.line + 1 + j })).filter((c) => c.text.startsWith('grpcurl'));
    if (output && commands.length !== 1) throw new Error(`docs/api.md line ${block.line}: a block followed by an output must hold one grpcurl command, not ${commands.length}`);
    for (const command of commands) examples.push({ line: command.line, command: command.text, output });
  });
  return examples;
}

/** Splits a command line into words, with '...' and "..." quoting as a POSIX shell does. */
function shellWords(command: string): string[] {
  const words: string[] = [];
  const pattern = /\s*(?:'([^']*)'|"((?:[^"\\]|\\.)*)"|([^\s'"]+))/gy;
  let word: string | undefined;
  let match: RegExpExecArray | null;
  let last = 0;
  while ((match = pattern.exec(command)) !== null && match[0] !== '') {
    const piece = match[1] ?? match[2]?.replace(/\\(.)/g, '$1') ?? match[3]!;
    const glued = match.index === last && word !== undefined && !/^\s/.test(match[0]);
    if (glued) word += piece;
    else {
      if (word !== undefined) words.push(word);
      word = piece;
    }
    last = pattern.lastIndex;
  }
  if (word !== undefined) words.push(word);
  if (command.slice(last).trim() !== '') throw new Error(`cannot split the command: ${command}`);
  return words;
}

interface GrpcurlCall {
  verbose: boolean;
  data?: string;
  addr: string;
  /** SERVICE/METHOD, or `list` / `describe` with its optional argument. */
  target: { method: string } | { subcommand: string; argument?: string };
}

/** The grpcurl command as the test understands it; anything else is an error in the doc. */
function parseGrpcurl(command: string): GrpcurlCall {
  const [tool, ...words] = shellWords(command);
  if (tool !== 'grpcurl') throw new Error(`not a grpcurl command: ${command}`);
  let plaintext = false;
  let verbose = false;
  let data: string | undefined;
  while (words[0]?.startsWith('-')) {
    const flag = words.shift()!;
    if (flag === '-plaintext') plaintext = true;
    else if (flag === '-v') verbose = true;
    else if (flag === '-d') data = words.shift();
    else throw new Error(`grpcurl flag ${flag} has no buf curl translation here: ${command}`);
  }
  // cairn serves no TLS yet, so every example must say -plaintext.
  if (!plaintext) throw new Error(`example without -plaintext: ${command}`);
  const [addr, second, third, ...rest] = words;
  if (!addr || !second || rest.length > 0) throw new Error(`expected ADDR and SERVICE/METHOD (or list/describe): ${command}`);
  if (second === 'list' || second === 'describe') return { verbose, data, addr, target: { subcommand: second, argument: third } };
  if (third !== undefined || !second.includes('/')) throw new Error(`expected SERVICE/METHOD: ${command}`);
  return { verbose, data, addr, target: { method: second } };
}

interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

function runBufCurl(args: string[]): Promise<RunResult> {
  const flags = ['curl', '--protocol', 'grpc', '--http2-prior-knowledge'];
  return new Promise((done) =>
    execFile(BUF, [...flags, ...args], { timeout: BUF_CALL_TIMEOUT_MS }, (err, stdout, stderr) =>
      done({ exitCode: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    ),
  );
}

/** Replaces each address (a key of `map`) found in `text` by its value; 127.0.0.1:7001 never matches inside 127.0.0.1:70011. */
function substitute(text: string, map: Map<string, string>): string {
  let out = text;
  for (const [from, to] of map) out = out.replace(new RegExp(`${from.replace(/[.]/g, '\\.')}(?![0-9])`, 'g'), to);
  return out;
}

/** The JSON values written one after another in `text` (a stream prints one per message). */
function jsonValues(text: string): unknown[] {
  const values: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '{' || c === '[') {
      if (depth++ === 0) start = i;
    } else if (c === '}' || c === ']') {
      if (--depth === 0) values.push(JSON.parse(text.slice(start, i + 1)));
    }
  }
  return values;
}

/** Where `actual` differs from the documented `expected`, under the doc's rules; empty when it matches. */
function documentedMismatches(expected: unknown, actual: unknown, path = '', field = '', depth = 0): string[] {
  if (VARYING_FIELDS.has(field) || (depth === 1 && VARYING_TOP_LEVEL_FIELDS.has(field))) return actual === undefined ? [`${path}: missing`] : [];
  if (typeof expected === 'string' && expected.endsWith(PREFIX_MARK)) {
    const prefix = expected.slice(0, -PREFIX_MARK.length);
    return typeof actual === 'string' && actual.startsWith(prefix) ? [] : [`${path}: ${JSON.stringify(actual)} does not start with ${JSON.stringify(prefix)}`];
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) return [`${path}: ${JSON.stringify(actual)} is not a list of ${expected.length}`];
    return expected.flatMap((e, i) => documentedMismatches(e, actual[i], `${path}[${i}]`, field, depth));
  }
  if (typeof expected === 'object' && expected !== null) {
    if (typeof actual !== 'object' || actual === null || Array.isArray(actual)) return [`${path}: ${JSON.stringify(actual)} is not an object`];
    return Object.entries(expected).flatMap(([key, value]) => documentedMismatches(value, (actual as Record<string, unknown>)[key], `${path}.${key}`, key, depth + 1));
  }
  return expected === actual ? [] : [`${path}: ${JSON.stringify(actual)}, documented ${JSON.stringify(expected)}`];
}

/** What a documented grpcurl error shows: its status code, message and trailers. */
interface DocumentedError {
  code: string;
  message: string;
  trailers: Map<string, string>;
}

function parseDocumentedError(body: string[]): DocumentedError {
  const code = body.map((l) => /^\s+Code: (\S+)$/.exec(l)?.[1]).find(Boolean);
  const message = body.map((l) => /^\s+Message: (.*)$/.exec(l)?.[1]).find((m) => m !== undefined);
  if (!code || message === undefined) throw new Error(`an error output needs "Code:" and "Message:" lines: ${body.join(' | ')}`);
  const trailers = new Map<string, string>();
  const from = body.indexOf('Response trailers received:');
  if (from >= 0) {
    for (const line of body.slice(from + 1)) {
      const trailer = /^([a-z0-9-]+): (.*)$/.exec(line);
      if (!trailer) break;
      trailers.set(trailer[1]!, trailer[2]!);
    }
  }
  return { code, message, trailers };
}

/** grpcurl prints grpc-go's code names (InvalidArgument), buf curl Connect's (invalid_argument). */
function bufCodeName(grpcurlCode: string): string {
  return grpcurlCode.replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase();
}

/** The error buf curl -v reported: its JSON on stderr, and the metadata of the RPC's own stream. */
function bufError(stderr: string): { code?: string; message?: string; metadata: Map<string, string> } {
  const lines = stderr.split('\n');
  const json = jsonValues(lines.filter((l) => !l.startsWith('buf: ')).join('\n'))[0] as { code?: string; message?: string } | undefined;
  const received = lines.map((l) => /^buf: < \(#(\d+)\) ([A-Za-z0-9-]+): (.*)$/.exec(l)).filter((m): m is RegExpExecArray => m !== null);
  const stream = Math.max(0, ...received.map((m) => Number(m[1])));
  const metadata = new Map(received.filter((m) => Number(m[1]) === stream).map((m) => [m[2]!.toLowerCase(), m[3]!]));
  return { code: json?.code, message: json?.message, metadata };
}

describe('docs/api.md', () => {
  const examples = examplesOf(readFileSync(API_DOC, 'utf8'));

  test('its examples cover every RPC of KV and Cluster, and Health/Check', () => {
    const methods = new Set(examples.map((e) => parseGrpcurl(e.command).target).flatMap((t) => ('method' in t ? [t.method] : [])));
    for (const rpc of ['Put', 'Get', 'Delete', 'Range']) expect(methods).toContain(`cairn.kv.v1.KV/${rpc}`);
    for (const rpc of ['Status', 'MemberList', 'MemberAdd', 'MemberPromote', 'MemberRemove', 'LeaderTransfer', 'Snapshot', 'SnapshotSave']) {
      expect(methods).toContain(`cairn.kv.v1.Cluster/${rpc}`);
    }
    expect(methods).toContain('grpc.health.v1.Health/Check');
    expect(examples.filter((e) => e.output?.body.some((l) => l.startsWith('ERROR:'))).length).toBeGreaterThan(5);
  });

  test('the comparison finds a wrong field, a missing varying field and a wrong prefix', () => {
    expect(documentedMismatches({ a: { b: '1' } }, { a: { b: '2' }, c: 3 })).toEqual(['.a.b: "2", documented "1"']);
    expect(documentedMismatches({ revision: '1' }, {})).toEqual(['.revision: missing']);
    expect(documentedMismatches({ version: '0.1.0', kv: { version: '2' } }, { version: '9.9.9', kv: { version: '3' } })).toEqual(['.kv.version: "3", documented "2"']);
    expect(documentedMismatches({ data: 'abc...' }, { data: 'abd' })).toHaveLength(1);
    expect(documentedMismatches({ kvs: [{}] }, { kvs: [{}, {}] })).toHaveLength(1);
  });

  describe('against a real 3-node cluster', () => {
    let cluster: ProcessCluster;
    /** Doc address -> real address, for commands; and back, for what the cluster prints. */
    const toReal = new Map<string, string>();
    const toDoc = new Map<string, string>();

    beforeAll(async () => {
      cluster = await ProcessCluster.start(DOC_NODE_IDS.length, TICK_ARGS);
      for (const id of DOC_NODE_IDS) {
        toReal.set(docClientAddr(id), cluster.node(id).clientAddr);
        toReal.set(docPeerAddr(id), cluster.node(id).peerAddr);
      }
      toReal.set(DOC_ABSENT_PEER_ADDR, `127.0.0.1:${await freePort()}`);
      for (const [doc, real] of toReal) toDoc.set(real, doc);
      // The doc's examples have node 1 leading.
      if ((await cluster.waitForLeader()) !== 1) await cluster.client([1]).leaderTransfer(1);
      await waitFor('node 1 to lead, as every node knows', async () => (await cluster.waitForLeader()) === 1);
    });
    afterAll(() => cluster?.stop());

    test('every example prints what the doc shows (run with buf curl)', async () => {
      const problems: string[] = [];
      let ran = 0;
      for (const example of examples) {
        const call = parseGrpcurl(example.command);
        if ('subcommand' in call.target && SKIPPED_SUBCOMMANDS.has(call.target.subcommand)) continue;
        ran++;
        const where = `docs/api.md line ${example.line}`;
        const found = await checkExample(call, example.output, toReal, toDoc);
        problems.push(...found.map((p) => `${where}: ${p}`));
        // A membership change or a leadership transfer: let the nodes agree on a leader before the next example.
        if ('method' in call.target && /Cluster\/(Member|LeaderTransfer)/.test(call.target.method)) await cluster.waitForLeader();
      }
      expect(problems).toEqual([]);
      expect(ran).toBeGreaterThan(20);
    });
  });
});

async function checkExample(call: GrpcurlCall, output: FencedBlock | undefined, toReal: Map<string, string>, toDoc: Map<string, string>): Promise<string[]> {
  const addr = toReal.get(call.addr);
  if (!addr) return [`address ${call.addr} is not one of the documented nodes`];
  const base = `http://${addr}`;
  if ('subcommand' in call.target) return checkList(call.target.argument, base, output);
  const args = [...(call.verbose ? ['-v'] : []), ...(call.data !== undefined ? ['-d', substitute(call.data, toReal)] : []), `${base}/${call.target.method}`];
  const result = await runBufCurl(args);
  const stderr = substitute(result.stderr, toDoc);
  const isError = output?.lang === 'text' && output.body.some((l) => l.startsWith('ERROR:'));
  if (isError) return checkError(call, parseDocumentedError(output.body), result.exitCode, stderr);
  if (result.exitCode !== 0) return [`failed (exit ${result.exitCode}): ${stderr.trim()}`];
  if (!output) return [];
  if (output.lang !== 'json') return [`an answer's output must be a json block, not ${output.lang}`];
  const expected = jsonValues(output.body.join('\n'));
  const actual = jsonValues(substitute(result.stdout, toDoc));
  if (actual.length < expected.length) return [`printed ${actual.length} messages, documented ${expected.length}: ${result.stdout}`];
  return expected.flatMap((e, i) => documentedMismatches(e, actual[i], `message ${i + 1}`));
}

function checkError(call: GrpcurlCall, documented: DocumentedError, exitCode: number, stderr: string): string[] {
  if (exitCode === 0) return ['succeeded, documented as an error'];
  if (documented.trailers.size > 0 && !call.verbose) return ['documents trailers, which grpcurl prints only with -v'];
  const actual = bufError(stderr);
  const problems: string[] = [];
  if (actual.code !== bufCodeName(documented.code)) problems.push(`status ${actual.code}, documented ${documented.code}`);
  if (actual.message !== documented.message) problems.push(`message ${JSON.stringify(actual.message)}, documented ${JSON.stringify(documented.message)}`);
  for (const [name, value] of documented.trailers) {
    if (actual.metadata.get(name) !== value) problems.push(`trailer ${name}: ${actual.metadata.get(name) ?? '(absent)'}, documented ${value}`);
  }
  const errorCode = actual.metadata.get(ERROR_CODE_METADATA);
  if (errorCode !== undefined && !documented.trailers.has(ERROR_CODE_METADATA)) problems.push(`the answer carries ${ERROR_CODE_METADATA}: ${errorCode}, which the doc does not show`);
  return problems;
}

/** `grpcurl list` is buf curl --list-services; `grpcurl list SERVICE` is its methods from --list-methods, as SERVICE.METHOD. */
async function checkList(service: string | undefined, base: string, output: FencedBlock | undefined): Promise<string[]> {
  const result = await runBufCurl([service ? '--list-methods' : '--list-services', base]);
  if (result.exitCode !== 0) return [`failed (exit ${result.exitCode}): ${result.stderr.trim()}`];
  const names = result.stdout.split('\n').filter(Boolean);
  const listed = service ? names.filter((n) => n.startsWith(`${service}/`)).map((n) => n.replace('/', '.')) : names;
  if (!output) return [];
  const documented = output.body.filter(Boolean);
  return JSON.stringify([...listed].sort()) === JSON.stringify([...documented].sort()) ? [] : [`lists ${listed.join(', ')}; documented ${documented.join(', ')}`];
}
