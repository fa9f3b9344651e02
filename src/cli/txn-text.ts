import { Compare, CompareResult, CompareTarget, RequestOp, TxnResponse } from '../../gen/cairn/kv/v1/kv';
import { UsageError } from './flags';
import { splitWords } from './words';

/**
 * `cairn txn` reads a transaction as text, in etcdctl's layout: compares, a blank line, the
 * success operations, a blank line, the failure operations.
 *
 *   value("app/leader") = "node-1"
 *   version("app/config") > "0"
 *
 *   put app/leader node-2
 *   get app/ --prefix
 *
 *   get app/leader
 *
 * A compare is TARGET("KEY") OP "VALUE": TARGET value (val), version (ver), create or mod;
 * OP one of = == != < >; numbers may go without quotes. An operation is `put KEY VALUE`,
 * `get KEY [--prefix] [--limit N]` or `del KEY`, with the shell's quoting.
 */

/** What a txn's text asks for: the TxnRequest without its session (the client adds it). */
export interface TxnText {
  compare: Compare[];
  success: RequestOp[];
  failure: RequestOp[];
}

/** The most lines `cairn txn` reads (MAX_TXN_OPS compares and operations per branch, and the blank lines). */
export const MAX_TXN_TEXT_LINES = 3 * 128 + 2;

// Maps, not objects: a target typed as "constructor" must not find Object's.
const TARGETS = new Map<string, CompareTarget>([
  ['value', CompareTarget.COMPARE_TARGET_VALUE],
  ['val', CompareTarget.COMPARE_TARGET_VALUE],
  ['version', CompareTarget.COMPARE_TARGET_VERSION],
  ['ver', CompareTarget.COMPARE_TARGET_VERSION],
  ['create', CompareTarget.COMPARE_TARGET_CREATE_REVISION],
  ['mod', CompareTarget.COMPARE_TARGET_MOD_REVISION],
]);
const RESULTS = new Map<string, CompareResult>([
  ['=', CompareResult.COMPARE_RESULT_EQUAL],
  ['==', CompareResult.COMPARE_RESULT_EQUAL],
  ['!=', CompareResult.COMPARE_RESULT_NOT_EQUAL],
  ['<', CompareResult.COMPARE_RESULT_LESS],
  ['>', CompareResult.COMPARE_RESULT_GREATER],
]);
const COMPARE_PATTERN = /^(\w+)\("((?:[^"\\]|\\.)*)"\)\s*(==|=|!=|<|>)\s*(?:"((?:[^"\\]|\\.)*)"|(\d+))$/;
const NO_SESSION = { clientId: '', sequence: 0, lowestUnansweredSequence: 0 };

export function parseTxnText(text: string): TxnText {
  const lines = text.split(/\r?\n/);
  if (lines.length > MAX_TXN_TEXT_LINES + 1) throw new UsageError(`txn: more than ${MAX_TXN_TEXT_LINES} lines`);
  // As etcdctl reads it: each blank line ends one section, so two in a row leave a branch
  // empty (a failure branch must never run as the success one); blank lines after the
  // failure operations change nothing.
  const sections: string[][] = [[]];
  for (const raw of lines) {
    const line = raw.trim();
    if (line === '') {
      if (sections.length < 3) sections.push([]);
      else if (sections[2]!.length > 0) sections.push([]);
      continue;
    }
    if (sections.length > 3) throw new UsageError(`txn: "${line}" comes after the failure operations (compares, blank line, success, blank line, failure)`);
    sections[sections.length - 1]!.push(line);
  }
  const [compares = [], success = [], failure = []] = sections;
  return {
    compare: compares.map((line) => parseCompare(line)),
    success: success.map((line) => parseOp(line, 'success')),
    failure: failure.map((line) => parseOp(line, 'failure')),
  };
}

function unescape(text: string): string {
  return text.replace(/\\(.)/g, '$1');
}

export function parseCompare(line: string): Compare {
  const match = COMPARE_PATTERN.exec(line);
  if (!match) throw new UsageError(`txn: "${line}" is not a compare: write TARGET("KEY") OP "VALUE", e.g. value("k") = "v" or version("k") > "0"`);
  const [, targetWord, key, op, quoted, bare] = match as unknown as [string, string, string, string, string | undefined, string | undefined];
  const target = TARGETS.get(targetWord.toLowerCase());
  if (target === undefined) throw new UsageError(`txn: unknown compare target "${targetWord}" (value, version, create or mod)`);
  const given = quoted !== undefined ? unescape(quoted) : bare!;
  const compare: Compare = { key: Buffer.from(unescape(key)), target, result: RESULTS.get(op)!, targetUnion: undefined };
  if (target === CompareTarget.COMPARE_TARGET_VALUE) return { ...compare, targetUnion: { $case: 'value', value: Buffer.from(given) } };
  const number = Number(given);
  if (!/^\d+$/.test(given) || !Number.isSafeInteger(number)) throw new UsageError(`txn: "${line}": ${targetWord} compares with a whole number, got "${given}"`);
  const $case = target === CompareTarget.COMPARE_TARGET_VERSION ? 'version' : target === CompareTarget.COMPARE_TARGET_CREATE_REVISION ? 'createRevision' : 'modRevision';
  return { ...compare, targetUnion: { $case, value: number } };
}

export function parseOp(line: string, branch: string): RequestOp {
  // Words by position: a key or value may itself start with "--".
  const [verb = '', ...words] = splitWords(line);
  const form = `txn ${branch}: "${line}"`;
  switch (verb.toLowerCase()) {
    case 'put':
      if (words.length !== 2) throw new UsageError(`${form}: write put KEY VALUE`);
      return { request: { $case: 'requestPut', value: { key: Buffer.from(words[0]!), value: Buffer.from(words[1]!), prevKv: false, ...NO_SESSION } } };
    case 'del':
    case 'delete':
      if (words.length !== 1) throw new UsageError(`${form}: write del KEY`);
      return { request: { $case: 'requestDelete', value: { key: Buffer.from(words[0]!), prevKv: false, ...NO_SESSION } } };
    case 'get':
      return { request: { $case: 'requestRange', value: parseGet(words, form) } };
    default:
      throw new UsageError(`${form}: an operation is put KEY VALUE, get KEY [--prefix] [--limit N] or del KEY`);
  }
}

/** `get KEY [--prefix] [--limit N]`: the key first, then the flags. */
function parseGet(words: string[], form: string) {
  const usage = () => new UsageError(`${form}: write get KEY [--prefix] [--limit N]`);
  const [key, ...rest] = words;
  if (key === undefined) throw usage();
  let prefix = false;
  let limit = 0;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--prefix') prefix = true;
    else if (rest[i] === '--limit' && /^[1-9]\d*$/.test(rest[i + 1] ?? '') && Number.isSafeInteger(Number(rest[i + 1]))) limit = Number(rest[++i]);
    else throw usage();
  }
  return { key: Buffer.from(key), rangeEnd: Buffer.alloc(0), prefix, limit, keysOnly: false, consistency: 0 };
}

/**
 * A txn's answer as lines: SUCCESS or FAILURE with the revision, then one block per
 * operation; a nested txn's answer (request_txn) is its own SUCCESS or FAILURE line and
 * blocks, indented one step deeper.
 */
export function describeTxnResponse(response: TxnResponse, ops: RequestOp[], revision: number | undefined): string[] {
  return describeTxnLevel(response, ops, `(revision ${revision ?? '?'})`);
}

const NESTED_TXN_INDENT = '  ';

function describeTxnLevel(response: TxnResponse, ops: RequestOp[], note: string): string[] {
  const lines = [`${response.succeeded ? 'SUCCESS' : 'FAILURE'} ${note}`];
  response.responses.forEach((op, i) => {
    const request = ops[i]?.request;
    const r = op.response;
    const keyOf = () => (request?.$case === 'requestDelete' ? request.value.key.toString() : '?');
    if (r?.$case === 'responsePut') lines.push('OK');
    else if (r?.$case === 'responseDelete') lines.push(r.value.deleted ? `deleted ${keyOf()}` : `(not found: ${keyOf()})`);
    else if (r?.$case === 'responseRange') {
      for (const kv of r.value.kvs) lines.push(`${kv.key.toString()}\t${kv.value.toString()}`);
      if (r.value.kvs.length === 0) lines.push('(no keys)');
      if (r.value.more) lines.push('(more keys follow)');
    } else if (r?.$case === 'responseTxn') {
      const nested = request?.$case === 'requestTxn' ? request.value : undefined;
      const branch = nested ? (r.value.succeeded ? nested.success : nested.failure) : [];
      for (const line of describeTxnLevel(r.value, branch, '(nested txn)')) lines.push(NESTED_TXN_INDENT + line);
    }
  });
  return lines;
}
