import { CompareResult, CompareTarget } from '../../gen/cairn/kv/v1/kv';
import { UsageError } from '../../src/cli/flags';
import { describeTxnResponse, parseCompare, parseTxnText } from '../../src/cli/txn-text';

describe('cairn txn text', () => {
  test('compares, blank line, success, blank line, failure (etcdctl\'s layout)', () => {
    const parsed = parseTxnText('value("k") = "v"\nmod("k") > 3\n\nput k "new value"\ndel old\n\nget k --prefix --limit 5\n');
    expect(parsed.compare).toEqual([
      { key: Buffer.from('k'), target: CompareTarget.COMPARE_TARGET_VALUE, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'value', value: Buffer.from('v') } },
      { key: Buffer.from('k'), target: CompareTarget.COMPARE_TARGET_MOD_REVISION, result: CompareResult.COMPARE_RESULT_GREATER, targetUnion: { $case: 'modRevision', value: 3 } },
    ]);
    expect(parsed.success.map((op) => op.request?.$case)).toEqual(['requestPut', 'requestDelete']);
    expect(parsed.success[0]!.request).toMatchObject({ value: { key: Buffer.from('k'), value: Buffer.from('new value') } });
    expect(parsed.failure[0]!.request).toMatchObject({ $case: 'requestRange', value: { key: Buffer.from('k'), prefix: true, limit: 5 } });
  });

  test('two blank lines in a row leave the success branch empty: the failure operations never run as success ones', () => {
    const parsed = parseTxnText('value("k") = "v"\n\n\nput k x\n\n\n');
    expect(parsed.success).toEqual([]);
    expect(parsed.failure).toHaveLength(1);
  });

  test('keys and values by position: a key equal to the limit, and words starting with --', () => {
    expect(parseTxnText('\nget 5 --limit 5\n').success[0]!.request).toMatchObject({ value: { key: Buffer.from('5'), limit: 5 } });
    expect(parseTxnText('\nput --k "--v"\n').success[0]!.request).toMatchObject({ value: { key: Buffer.from('--k'), value: Buffer.from('--v') } });
    expect(() => parseTxnText('\nget k --limit 0x10\n')).toThrow('write get KEY [--prefix] [--limit N]');
    expect(() => parseCompare('constructor("k") = "1"')).toThrow('unknown compare target "constructor"');
    expect(() => parseCompare('__proto__("k") = "1"')).toThrow(UsageError);
  });

  test('no compares (the success branch always runs), and escapes inside quotes', () => {
    const parsed = parseTxnText('\nput a 1\n');
    expect(parsed.compare).toEqual([]);
    expect(parsed.success).toHaveLength(1);
    expect(parseCompare('value("a\\"b") != "x\\"y"')).toMatchObject({ key: Buffer.from('a"b'), result: CompareResult.COMPARE_RESULT_NOT_EQUAL, targetUnion: { value: Buffer.from('x"y') } });
    expect(parseCompare('ver("k") < "2"')).toMatchObject({ target: CompareTarget.COMPARE_TARGET_VERSION, targetUnion: { $case: 'version', value: 2 } });
  });

  test.each([
    ['value(k) = "v"', 'is not a compare'],
    ['size("k") = "1"', 'unknown compare target "size"'],
    ['version("k") = "one"', 'version compares with a whole number, got "one"'],
    ['\nput k', 'write put KEY VALUE'],
    ['\nget k --limit 0', 'write get KEY [--prefix] [--limit N]'],
    ['\nwatch k', 'an operation is put KEY VALUE'],
    ['value("a") = "1"\n\nput a 1\n\nput b 2\n\nput c 3', 'comes after the failure operations'],
  ])('%j is refused: %s', (text, message) => {
    expect(() => parseTxnText(text)).toThrow(UsageError);
    expect(() => parseTxnText(text)).toThrow(message);
  });

  test('the answer: SUCCESS or FAILURE with the revision, then each operation', () => {
    const ops = parseTxnText('\nput a 1\ndel b\nget c\n').success;
    const lines = describeTxnResponse(
      {
        header: undefined,
        succeeded: true,
        responses: [
          { response: { $case: 'responsePut', value: { header: undefined, prevKv: undefined } } },
          { response: { $case: 'responseDelete', value: { header: undefined, deleted: false, prevKv: undefined } } },
          { response: { $case: 'responseRange', value: { header: undefined, kvs: [], more: false } } },
        ],
      },
      ops,
      9,
    );
    expect(lines).toEqual(['SUCCESS (revision 9)', 'OK', '(not found: b)', '(no keys)']);
  });

  test('a nested txn\'s answer: its own SUCCESS or FAILURE line and operations, indented one step per level', () => {
    const noSession = { clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
    const inner = parseTxnText('\nput x 1\n\ndel gone\nget y\n');
    const innerRequest = { ...inner, ...noSession };
    const innermost = { compare: [], success: [], failure: parseTxnText('\n\nget z\n').failure, ...noSession };
    const ops = [...parseTxnText('\nput a 1\n').success, { request: { $case: 'requestTxn' as const, value: { ...innerRequest, failure: [...innerRequest.failure, { request: { $case: 'requestTxn' as const, value: innermost } }] } } }];
    const lines = describeTxnResponse(
      {
        header: undefined,
        succeeded: true,
        responses: [
          { response: { $case: 'responsePut', value: { header: undefined, prevKv: undefined } } },
          {
            response: {
              $case: 'responseTxn',
              value: {
                header: undefined,
                succeeded: false,
                responses: [
                  { response: { $case: 'responseDelete', value: { header: undefined, deleted: true, prevKv: undefined } } },
                  { response: { $case: 'responseRange', value: { header: undefined, kvs: [{ key: Buffer.from('y'), value: Buffer.from('2'), createRevision: 1, modRevision: 1, version: 1, lease: 0 }], more: false } } },
                  { response: { $case: 'responseTxn', value: { header: undefined, succeeded: false, responses: [{ response: { $case: 'responseRange', value: { header: undefined, kvs: [], more: false } } }] } } },
                ],
              },
            },
          },
        ],
      },
      ops,
      12,
    );
    expect(lines).toEqual(['SUCCESS (revision 12)', 'OK', '  FAILURE (nested txn)', '  deleted gone', '  y\t2', '    FAILURE (nested txn)', '    (no keys)']);
  });
});
