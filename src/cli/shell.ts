import { createInterface } from 'node:readline';
import { describeError } from './describe-error';
import { CairnClient } from './client';
import { parseArgs, UsageError } from './flags';
import { splitWords } from './words';

export { splitWords };
import { checkVerbFlags, runVerb, VERB_FLAGS, VERBS } from './verbs';

/** Text-protocol verbs people know from Redis and memcached, mapped onto cairn's. */
const ALIASES: Record<string, string> = { set: 'put', delete: 'del', keys: 'list', ls: 'list' };
const HELP = `verbs: put KEY VALUE | put KEY --from-file FILE | get KEY | del KEY | has KEY | cas KEY EXPECTED NEW | txn --from-file FILE | list [PREFIX] [--limit N] | status | members | member list|add|promote|remove ... | leader transfer [--to ID] | user ... | role ... | auth enable|disable|status | help | exit
(SET, GET, DEL, DELETE, HAS, CAS and LIST work too, in any case)
auth: SIGNUP NAME PASSWORD adds a user (root's job once auth is on); LOGIN NAME PASSWORD makes the lines after it run as that user; LOGOUT undoes it`;
/** Flags a shell line may carry; the client's own (--endpoints, --consistency, --timeout-ms) are fixed when the shell starts. */
const LINE_FLAGS = VERB_FLAGS.filter((flag) => flag !== 'consistency');

export type LineResult = 'ok' | 'failed' | 'exit';

/** SIGNUP/LOGIN/LOGOUT, for people used to seed 002's text protocol; undefined for any other word. */
async function runSessionWord(client: CairnClient, word: string, args: string[], print: (text: string) => void): Promise<LineResult | undefined> {
  if (word !== 'signup' && word !== 'login' && word !== 'logout') return undefined;
  if (word === 'logout') {
    if (args.length !== 0) throw new UsageError('usage: LOGOUT');
    client.logout();
    print('OK (logged out)');
    return 'ok';
  }
  if (args.length !== 2) throw new UsageError(`usage: ${word.toUpperCase()} NAME PASSWORD`);
  const [name, password] = args as [string, string];
  if (word === 'signup') {
    await client.authCall((c) => c.userAdd, { name, password });
    print(`OK (user ${name} added)`);
  } else {
    await client.login(name, password);
    print(`OK (logged in as ${name})`);
  }
  return 'ok';
}

/** Runs one shell line: 'exit' when the user asked to leave, 'failed' when it printed an error. */
export async function runShellLine(
  client: CairnClient,
  line: string,
  print: (text: string) => void,
  printError: (text: string) => void = print,
): Promise<LineResult> {
  try {
    const [first, ...args] = splitWords(line);
    if (!first) return 'ok';
    const word = first.toLowerCase();
    if (word === 'exit' || word === 'quit') return 'exit';
    if (word === 'help' || word === '?') {
      print(HELP);
      return 'ok';
    }
    const session = await runSessionWord(client, word, args, print);
    if (session) return session;
    const verb = ALIASES[word] ?? word;
    if (!VERBS.includes(verb)) throw new UsageError(`unknown verb "${first}" ("help" lists the verbs)`);
    if (args.some((arg) => arg === '--consistency' || arg.startsWith('--consistency='))) {
      throw new UsageError('--consistency is chosen when the shell starts: cairn shell --consistency serializable');
    }
    const { positional, flags } = parseArgs(args, [], LINE_FLAGS);
    checkVerbFlags(verb, flags, [], first, LINE_FLAGS);
    await runVerb(client, verb, positional, flags, print, { typed: first });
    return 'ok';
  } catch (err) {
    printError(`error: ${describeError(err)}`);
    return 'failed';
  }
}

/**
 * The prompt. Exit code 1 when any line failed with an error (a "not found" answer is not
 * an error), so a piped script's failures reach the caller; 0 otherwise.
 */
export async function runShell(client: CairnClient): Promise<number> {
  const interactive = Boolean(process.stdin.isTTY);
  const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: 'cairn> ', historySize: 1000, terminal: interactive });
  if (interactive) console.log(`connected to ${client.endpoints.join(', ')}; "help" lists the verbs`);
  let failures = 0;
  let lineNumber = 0;
  if (interactive) rl.prompt();
  for await (const line of rl) {
    lineNumber++;
    const where = interactive ? '' : ` (line ${lineNumber})`;
    const result = await runShellLine(client, line, (text) => console.log(text), (text) => console.error(text.replace(/^error:/, `error${where}:`)));
    if (result === 'exit') break;
    if (result === 'failed') failures++;
    if (interactive) rl.prompt();
  }
  rl.close();
  return failures > 0 ? 1 : 0;
}
