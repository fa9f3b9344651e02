import { parseEndpoints } from '../../src/cli/endpoints';
import { parseArgs } from '../../src/cli/flags';
import { splitWords } from '../../src/cli/shell';

describe('the cairn command line, without a cluster', () => {
  test('-e is --endpoints; -- ends the flags; a lone - and negative numbers are values', () => {
    expect(parseArgs(['get', 'k', '-e', 'h:1'], [], ['endpoints'], { e: 'endpoints' })).toEqual({ positional: ['get', 'k'], flags: { endpoints: 'h:1' } });
    expect(parseArgs(['put', 'k', '-'], [], ['endpoints'])).toEqual({ positional: ['put', 'k', '-'], flags: {} });
    expect(parseArgs(['put', 'k', '-5'], [], ['endpoints'])).toEqual({ positional: ['put', 'k', '-5'], flags: {} });
    expect(parseArgs(['put', 'k', '--', '--not-a-flag'], [], ['endpoints'])).toEqual({ positional: ['put', 'k', '--not-a-flag'], flags: {} });
  });

  test('an unknown short flag is an error where flags are known, and says how to pass such a value', () => {
    expect(() => parseArgs(['get', 'k', '-x'], [], ['endpoints'], { e: 'endpoints' })).toThrow(
      'unknown flag -x (known: --endpoints (-e)); put -- before a value that starts with "-"',
    );
    expect(() => parseArgs(['get', 'k', '-e'], [], ['endpoints'], { e: 'endpoints' })).toThrow('-e needs a value');
  });

  test('endpoints must be HOST:PORT: no silent default port', () => {
    expect(parseEndpoints(' 127.0.0.1:7001, localhost:7002 ,[::1]:7003')).toEqual(['127.0.0.1:7001', 'localhost:7002', '[::1]:7003']);
    expect(() => parseEndpoints('127.0.0.1')).toThrow('endpoint "127.0.0.1" is not HOST:PORT');
    expect(() => parseEndpoints('127.0.0.1:7001,127.0.0.1:')).toThrow('endpoint "127.0.0.1:" is not HOST:PORT');
    expect(() => parseEndpoints('127.0.0.1:70000')).toThrow('port 70000 is not 1-65535');
    expect(() => parseEndpoints(' , ')).toThrow('--endpoints names no endpoint');
  });

  test('the shell splits words, keeps quoted spaces and escaped quotes, and refuses an open quote', () => {
    expect(splitWords('SET motd "say \\"hi\\" there"')).toEqual(['SET', 'motd', 'say "hi" there']);
    expect(splitWords('SET empty ""')).toEqual(['SET', 'empty', '']);
    expect(splitWords('SET a"b c"d')).toEqual(['SET', 'ab cd']);
    expect(() => splitWords('SET motd "hello')).toThrow('unterminated quote: the " at column 10 is never closed');
  });
});
