#!/usr/bin/env node
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { buildServerConfig, SERVE_FLAGS } from '../server/config';
import { createLogger } from '../server/logger';
import { CairnNode } from '../server/server';
import { VERSION } from '../server/services';
import { CairnClient, DEFAULT_ENDPOINTS } from './client';
import { runLocalCluster } from './cluster';
import { describeError } from './describe-error';
import { parseArgs, resolveFlags, UsageError } from './flags';
import { runShell } from './shell';
import { runVerb, VERBS } from './verbs';

const USAGE = `cairn: a Raft-replicated key-value database

Usage:
  cairn serve --id ID --data-dir DIR --client-addr HOST:PORT --peer-addr HOST:PORT --peers ID=HOST:PORT,...
  cairn cluster [--nodes 3] [--data-dir ./data] [--timing default|demo]
                                   start a local cluster (client ports 7001.., peer ports 7101..)
  cairn put KEY VALUE              set a key
  cairn get KEY                    print a key's value
  cairn del KEY                    delete a key
  cairn has KEY                    print true or false
  cairn list [PREFIX] [--limit N]  list keys (and values) with a prefix
  cairn status                     every endpoint's Raft status
  cairn members                    the cluster's members
  cairn shell                      an interactive prompt with the same verbs (and SET/GET/DEL/HAS/LIST)

Client flags:
  --endpoints HOST:PORT,...        default ${DEFAULT_ENDPOINTS.join(',')} (env CAIRN_ENDPOINTS)
  --consistency linearizable|serializable   for reads (default linearizable)
  --timeout-ms N                   per attempt (default 5000)

Run "cairn serve --help" for every server flag.`;

const CLIENT_FLAGS = ['endpoints', 'consistency', 'timeout-ms', 'limit'];
const CLUSTER_USAGE = `cairn cluster [--nodes 3] [--data-dir ./data] [--timing default|demo] [--log-level info] [--host 127.0.0.1]

Starts --nodes local cairn serve processes: node N serves clients on port 7000+N and peers on
7100+N, keeps its data in DATA-DIR/node-N, and logs here. Ctrl-C stops them all. A node that
dies is not restarted until the next start.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === 'help' || command === '-h') {
    console.log(USAGE);
    return command ? 0 : 2;
  }
  if (command === '--version' || command === 'version') {
    console.log(`cairn ${VERSION}`);
    return 0;
  }
  if (command === 'serve') return serve(rest);
  if (command === 'cluster') {
    if (rest.includes('--help')) {
      console.log(CLUSTER_USAGE);
      return 0;
    }
    return runLocalCluster(rest, __filename);
  }
  const { positional, flags } = parseArgs(rest, [], CLIENT_FLAGS);
  const client = clientFromFlags(flags);
  try {
    if (command === 'shell') return await runShell(client);
    if (!VERBS.includes(command)) throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
    return await runVerb(client, command, positional, flags, (line) => console.log(line));
  } finally {
    client.close();
  }
}

function clientFromFlags(flags: Record<string, string>): CairnClient {
  const endpoints = (flags.endpoints ?? process.env.CAIRN_ENDPOINTS ?? DEFAULT_ENDPOINTS.join(','))
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean);
  if (endpoints.length === 0) throw new UsageError('--endpoints names no endpoint');
  const consistencyName = (flags.consistency ?? 'linearizable').toLowerCase();
  const consistency =
    consistencyName === 'linearizable'
      ? Consistency.CONSISTENCY_LINEARIZABLE
      : consistencyName === 'serializable'
        ? Consistency.CONSISTENCY_SERIALIZABLE
        : undefined;
  if (consistency === undefined) throw new UsageError(`--consistency must be linearizable or serializable, got "${flags.consistency}"`);
  const timeoutMs = Number(flags['timeout-ms'] ?? 5000);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) throw new UsageError('--timeout-ms must be a positive integer');
  delete flags.endpoints;
  delete flags.consistency;
  delete flags['timeout-ms'];
  return new CairnClient({ endpoints, timeoutMs, consistency });
}

async function serve(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    console.log('cairn serve flags (each also read from its environment variable):\n');
    for (const spec of SERVE_FLAGS) console.log(`  --${spec.flag.padEnd(20)} ${spec.env.padEnd(26)} ${spec.help}${spec.default ? ` (default ${spec.default})` : ''}`);
    return 0;
  }
  const { positional, flags } = parseArgs(argv);
  if (positional.length > 0) throw new UsageError(`cairn serve takes no arguments, got "${positional.join(' ')}"`);
  const config = buildServerConfig(resolveFlags(SERVE_FLAGS, flags, process.env));
  const logger = createLogger(config.logLevel, { node: config.id });
  const node = await CairnNode.start(config, logger, (err) => {
    logger.fatal({ err }, 'fatal error: stopping the node');
    process.exit(1);
  });
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: string) => {
      logger.info({ signal }, stopping ? 'signal received; already stopping' : 'signal received');
      if (stopping) return;
      stopping = true;
      node.stop().then(resolve, (err) => {
        logger.error({ err }, 'shutdown failed');
        resolve();
      });
    };
    process.on('SIGTERM', () => onSignal('SIGTERM'));
    process.on('SIGINT', () => onSignal('SIGINT'));
  });
  return 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      console.error(`cairn: ${describeError(err)}`);
      process.exitCode = err instanceof UsageError ? 2 : 1;
    },
  );
}
