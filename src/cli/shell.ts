import { createInterface } from 'node:readline';
import { describeError } from './describe-error';
import { CairnClient } from './client';
import { parseArgs } from './flags';
import { runVerb } from './verbs';

/** Text-protocol verbs people know from Redis and memcached, mapped onto cairn's. */
const ALIASES: Record<string, string> = { set: 'put', delete: 'del', keys: 'list', ls: 'list' };
const HELP = `verbs: put KEY VALUE | get KEY | del KEY | has KEY | list [PREFIX] [--limit N] | status | members | help | exit
(SET, GET, DEL, DELETE, HAS and LIST work too, in any case)`;

/** Splits a line into words; "double quotes" keep spaces in a value. */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  for (const match of line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) {
    words.push(match[1] !== undefined ? match[1].replace(/\\(.)/g, '$1') : match[2]!);
  }
  return words;
}

/** Runs one shell line; returns false when the user asked to leave. */
export async function runShellLine(client: CairnClient, line: string, print: (text: string) => void): Promise<boolean> {
  const [first, ...args] = splitWords(line);
  if (!first) return true;
  const word = first.toLowerCase();
  if (word === 'exit' || word === 'quit') return false;
  if (word === 'help' || word === '?') {
    print(HELP);
    return true;
  }
  try {
    const { positional, flags } = parseArgs(args, [], ['limit']);
    await runVerb(client, ALIASES[word] ?? word, positional, flags, print);
  } catch (err) {
    print(`error: ${describeError(err)}`);
  }
  return true;
}

export async function runShell(client: CairnClient): Promise<number> {
  const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: 'cairn> ', historySize: 1000, terminal: process.stdin.isTTY });
  console.log(`connected to ${client.endpoints.join(', ')}; "help" lists the verbs`);
  rl.prompt();
  for await (const line of rl) {
    if (!(await runShellLine(client, line, (text) => console.log(text)))) break;
    rl.prompt();
  }
  rl.close();
  return 0;
}
