/**
 * deploy/: the Kubernetes manifests are valid objects (kubernetes-models' schemas, and no
 * field the schemas do not know, which the API server would drop or refuse), they carry
 * what `cairn serve`'s StatefulSet mode relies on, and the Dockerfile and compose file agree
 * with them. Each check is also run on a broken copy, so that it can fail.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { delimiter, dirname, join, relative } from 'node:path';
import * as ts from 'typescript';
import { parseAllDocuments, parseDocument } from 'yaml';
import { SERVE_FLAGS } from '../../src/server/config';
import { placeInStatefulSet } from '../../src/server/statefulset';

const ROOT = join(__dirname, '..', '..');
const K8S_DIR = join(ROOT, 'deploy', 'k8s');
const OVERLAY_DIR = join(ROOT, 'deploy', 'examples', 'overlay');
const TLS_OVERLAY_DIR = join(ROOT, 'deploy', 'examples', 'tls');
const VALIDATOR = join(ROOT, 'test', 'support', 'k8s-validate.mjs');

/** The model (runtime class and TypeScript interface) of each kind the manifests use. */
const MODELS: Record<string, { module: string; className: string; typeName: string }> = {
  'v1/Service': { module: 'kubernetes-models/v1/Service', className: 'Service', typeName: 'IService' },
  'apps/v1/StatefulSet': { module: 'kubernetes-models/apps/v1/StatefulSet', className: 'StatefulSet', typeName: 'IStatefulSet' },
  'policy/v1/PodDisruptionBudget': { module: 'kubernetes-models/policy/v1/PodDisruptionBudget', className: 'PodDisruptionBudget', typeName: 'IPodDisruptionBudget' },
};

/**
 * The environment of StatefulSet mode, named by the server side of issue 10 (kept here
 * until every one of them is in SERVE_FLAGS; names in both are fine).
 */
const KNOWN_ENV = new Set<string>(SERVE_FLAGS.map((spec) => spec.env));
/** Exactly what the StatefulSet sets, no more (a stray CAIRN_* variable would be read as a flag). */
const STATEFULSET_ENV = [
  'CAIRN_POD_NAME', 'CAIRN_NAMESPACE', 'CAIRN_PEER_SERVICE', 'CAIRN_CLUSTER_DOMAIN', 'CAIRN_INITIAL_CLUSTER_SIZE',
  'CAIRN_CLUSTER_TOKEN', 'CAIRN_DATA_DIR', 'CAIRN_CLIENT_ADDR', 'CAIRN_PEER_ADDR', 'CAIRN_HTTP_ADDR',
];
const KV_HEALTH_SERVICE = 'cairn.kv.v1.KV';
const RUN_AS_USER = 10001;

/**
 * The longest a node's stop can take with the default timing (src/server/server.ts): the
 * leader's handover, SHUTDOWN_TRANSFER_ELECTION_TIMEOUTS (2) election timeouts of at most
 * 2 s each once randomized, then the client and the peer server drain, SHUTDOWN_GRACE_MS
 * (3 s) each. terminationGracePeriodSeconds must leave room beyond it.
 */
const WORST_STOP_SECONDS = 2 * 2 + 2 * 3;

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any -- parsed YAML, checked field by field below

interface Manifest {
  file: string;
  index: number;
  object: Json;
}

function yamlFilesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return yamlFilesUnder(path);
    return /\.ya?ml$/.test(entry.name) ? [path] : [];
  }).sort();
}

function parseYamlDocuments(path: string): Json[] {
  return parseAllDocuments(readFileSync(path, 'utf8')).map((doc, i) => {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length > 0) throw new Error(`${relative(ROOT, path)} document ${i}: ${problems.map((p) => p.message).join('; ')}`);
    return doc.toJS();
  }).filter((object) => object !== null);
}

function parseYamlFile(path: string): Json {
  const doc = parseDocument(readFileSync(path, 'utf8'), { merge: true });
  const problems = [...doc.errors, ...doc.warnings];
  if (problems.length > 0) throw new Error(`${relative(ROOT, path)}: ${problems.map((p) => p.message).join('; ')}`);
  return doc.toJS({ maxAliasCount: 100 });
}

const isKustomization = (path: string) => /^kustomization\.ya?ml$/.test(path.split('/').pop()!);

function loadManifests(dir: string): Manifest[] {
  return yamlFilesUnder(dir).filter((path) => !isKustomization(path)).flatMap((path) =>
    parseYamlDocuments(path).map((object, index) => ({ file: relative(dir, path), index, object })));
}

function modelOf(object: Json) {
  const model = MODELS[`${object?.apiVersion}/${object?.kind}`];
  if (!model) throw new Error(`no model for apiVersion ${object?.apiVersion} kind ${object?.kind}: add it to MODELS`);
  return model;
}

/** kubernetes-models' validate() on each object: undefined where valid, else its error. */
function schemaErrors(objects: Json[]): (string | undefined)[] {
  const requests = objects.map((object) => ({ ...modelOf(object), object }));
  const out = execFileSync(process.execPath, [VALIDATOR], { cwd: ROOT, input: JSON.stringify(requests), encoding: 'utf8', timeout: 60_000 });
  const results = JSON.parse(out) as { ok: boolean; error?: string }[];
  expect(results).toHaveLength(objects.length);
  return results.map((r) => (r.ok ? undefined : r.error));
}

/**
 * Fields the schemas do not know, found by type-checking each object as an object literal
 * of its kubernetes-models interface (TypeScript's excess property check reaches every
 * nesting level). validate() accepts unknown fields; kubectl's strict validation does not,
 * and a misspelled field would otherwise be silently dropped.
 */
function unknownFieldErrors(objects: Json[]): string[][] {
  const files = objects.map((object, i) => {
    const { module, typeName } = modelOf(object);
    const text = `import type { ${typeName} } from '${module}';\nexport const manifest: ${typeName} = ${JSON.stringify(object, null, 1)};\n`;
    return { path: join(ROOT, '.k8s-typecheck', `manifest-${i}.mts`), text };
  });
  const byPath = new Map(files.map((f) => [f.path, f.text]));
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (path) => byPath.has(path) || fileExists.call(host, path);
  host.readFile = (path) => byPath.get(path) ?? readFile.call(host, path);
  host.getSourceFile = (path, language, ...rest) => {
    const text = byPath.get(path);
    return text !== undefined ? ts.createSourceFile(path, text, language) : getSourceFile.call(host, path, language, ...rest);
  };
  const program = ts.createProgram(files.map((f) => f.path), options, host);
  return files.map((f) => ts.getPreEmitDiagnostics(program, program.getSourceFile(f.path))
    .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')));
}

const base = loadManifests(K8S_DIR);
const kindOf = (kind: string) => base.filter((m) => m.object.kind === kind).map((m) => m.object);
const statefulSet = kindOf('StatefulSet')[0];
const pod = statefulSet?.spec?.template?.spec;
const container = pod?.containers?.find((c: Json) => c.name === 'cairn');
const headless = kindOf('Service').find((s) => s.spec?.clusterIP === 'None');
const clientService = kindOf('Service').find((s) => s.spec?.clusterIP !== 'None');
const pdb = kindOf('PodDisruptionBudget')[0];

function envValue(name: string): Json {
  const entry = container.env.find((e: Json) => e.name === name);
  if (!entry) throw new Error(`the container sets no ${name}`);
  return entry.value ?? entry.valueFrom;
}

function containerPort(name: string): number {
  const port = container.ports.find((p: Json) => p.name === name);
  if (!port) throw new Error(`the container has no port named ${name}`);
  return port.containerPort;
}

const portOf = (hostPort: string) => Number(hostPort.split(':').pop());
const selects = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

describe('deploy/k8s manifests', () => {
  it('parse, and hold one StatefulSet, a headless and a client Service, and a PodDisruptionBudget, with no namespace of their own', () => {
    expect(base.map((m) => m.object.kind).sort()).toEqual(['PodDisruptionBudget', 'Service', 'Service', 'StatefulSet']);
    expect(headless && clientService && statefulSet && pdb).toBeTruthy();
    for (const { file, object } of base) expect({ file, namespace: object.metadata?.namespace }).toEqual({ file, namespace: undefined });
  });

  it('every file kustomization.yaml lists exists, and every manifest is listed', () => {
    const kustomization = parseYamlFile(join(K8S_DIR, 'kustomization.yaml'));
    expect(kustomization.kind).toBe('Kustomization');
    const listed: string[] = kustomization.resources;
    for (const file of listed) expect({ file, exists: existsSync(join(K8S_DIR, file)) }).toEqual({ file, exists: true });
    expect([...listed].sort()).toEqual([...new Set(base.map((m) => m.file))].sort());
  });

  it('validate against the Kubernetes schemas, and a manifest with a wrong field type does not', () => {
    const errors = schemaErrors(base.map((m) => m.object));
    expect(base.map((m, i) => ({ file: m.file, error: errors[i] }))).toEqual(base.map((m) => ({ file: m.file, error: undefined })));

    const broken = structuredClone(statefulSet);
    broken.spec.template.spec.containers[0].ports[0].containerPort = '7001';
    const [error] = schemaErrors([broken]);
    expect(error).toMatch(/containerPort must be integer/);
  });

  it('use no field the schemas do not know, and a misspelled field is caught', () => {
    const objects = base.map((m) => m.object);
    const broken = structuredClone(headless);
    broken.spec.publishNotReadyAdresses = broken.spec.publishNotReadyAddresses;
    delete broken.spec.publishNotReadyAddresses;
    const [...errors] = unknownFieldErrors([...objects, broken]);
    const brokenErrors = errors.pop()!;
    expect(base.map((m, i) => ({ file: m.file, errors: errors[i] }))).toEqual(base.map((m) => ({ file: m.file, errors: [] })));
    expect(brokenErrors.join('\n')).toMatch(/publishNotReadyAdresses/);
  });

  it('the headless Service publishes every pod\'s peer port, ready or not', () => {
    expect(headless.spec.clusterIP).toBe('None');
    expect(headless.spec.publishNotReadyAddresses).toBe(true);
    const peer = headless.spec.ports.find((p: Json) => p.name === 'peer');
    expect(peer.port).toBe(7101);
    expect(peer.targetPort).toBe('peer');
  });

  it('the StatefulSet is what StatefulSet mode expects: Parallel, the headless Service, initial size = replicas', () => {
    expect(statefulSet.metadata.name).toBe('cairn');
    expect(statefulSet.spec.podManagementPolicy).toBe('Parallel');
    expect(statefulSet.spec.serviceName).toBe(headless.metadata.name);
    expect(statefulSet.spec.replicas).toBe(3);
    expect(envValue('CAIRN_INITIAL_CLUSTER_SIZE')).toBe(String(statefulSet.spec.replicas));
    expect(envValue('CAIRN_PEER_SERVICE')).toBe(headless.metadata.name);
    expect(envValue('CAIRN_POD_NAME')).toEqual({ fieldRef: { fieldPath: 'metadata.name' } });
    expect(envValue('CAIRN_NAMESPACE')).toEqual({ fieldRef: { fieldPath: 'metadata.namespace' } });
    expect(envValue('CAIRN_CLUSTER_DOMAIN')).toBe('cluster.local');
    expect(container.env.map((e: Json) => e.name).sort()).toEqual([...STATEFULSET_ENV].sort());
    for (const name of container.env.map((e: Json) => e.name)) expect({ name, known: KNOWN_ENV.has(name) }).toEqual({ name, known: true });
    expect(container.image).toBe('cairn:latest');
    expect(container.imagePullPolicy).toBe('IfNotPresent');
    expect(container.args).toEqual(['serve']);
    // The client Service is named cairn: its link variables would land among cairn's flags.
    expect(pod.enableServiceLinks).toBe(false);
  });

  it('the data dir is the volume claim template\'s mount', () => {
    const claims = statefulSet.spec.volumeClaimTemplates.map((t: Json) => t.metadata.name);
    const mount = container.volumeMounts.find((v: Json) => v.mountPath === envValue('CAIRN_DATA_DIR'));
    expect(envValue('CAIRN_DATA_DIR')).toBe('/var/lib/cairn');
    expect(claims).toContain(mount?.name);
  });

  it('ports agree between the addresses, the container, the Services, the probes and the scrape annotations', () => {
    expect(containerPort('client')).toBe(7001);
    expect(containerPort('peer')).toBe(7101);
    expect(containerPort('http')).toBe(7201);
    expect(portOf(envValue('CAIRN_CLIENT_ADDR'))).toBe(containerPort('client'));
    expect(portOf(envValue('CAIRN_PEER_ADDR'))).toBe(containerPort('peer'));
    expect(portOf(envValue('CAIRN_HTTP_ADDR'))).toBe(containerPort('http'));
    for (const service of [headless, clientService]) {
      for (const port of service.spec.ports) {
        expect({ service: service.metadata.name, port: port.port }).toEqual({ service: service.metadata.name, port: containerPort(port.targetPort) });
      }
    }
    expect(clientService.spec.ports.map((p: Json) => p.targetPort).sort()).toEqual(['client', 'http']);
    expect(container.livenessProbe.grpc).toEqual({ port: containerPort('client'), service: '' });
    expect(container.startupProbe.grpc).toEqual({ port: containerPort('client'), service: '' });
    expect(container.readinessProbe.grpc).toEqual({ port: containerPort('client'), service: KV_HEALTH_SERVICE });
    const annotations = statefulSet.spec.template.metadata.annotations;
    expect(annotations['prometheus.io/scrape']).toBe('true');
    expect(Number(annotations['prometheus.io/port'])).toBe(containerPort('http'));
    expect(annotations['prometheus.io/path']).toBe('/metrics');
  });

  it('the Services, the PodDisruptionBudget and the anti-affinity select the StatefulSet\'s pods', () => {
    const labels = statefulSet.spec.template.metadata.labels;
    const selector = statefulSet.spec.selector.matchLabels;
    expect(selects(selector, labels)).toBe(true);
    expect(selects(headless.spec.selector, labels)).toBe(true);
    expect(selects(clientService.spec.selector, labels)).toBe(true);
    expect(pdb.spec.maxUnavailable).toBe(1);
    expect(pdb.spec.selector.matchLabels).toEqual(selector);
    const terms = [
      ...(pod.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution ?? []).map((t: Json) => t.podAffinityTerm),
      ...(pod.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution ?? []),
    ];
    expect(terms.some((t: Json) => t.topologyKey === 'kubernetes.io/hostname' && selects(t.labelSelector.matchLabels, labels))).toBe(true);
  });

  it('runs as uid 10001 on a read-only root, with requests, limits and a grace period beyond the longest stop', () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: RUN_AS_USER, fsGroup: RUN_AS_USER });
    expect(container.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    expect(Object.keys(container.resources.requests).sort()).toEqual(['cpu', 'memory']);
    expect(Object.keys(container.resources.limits).sort()).toEqual(['cpu', 'memory']);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(2 * WORST_STOP_SECONDS);
  });
});

describe('deploy/examples/overlay', () => {
  const overlay = parseYamlFile(join(OVERLAY_DIR, 'kustomization.yaml'));

  it('builds on deploy/k8s and bootstraps as many voters as it runs pods', () => {
    expect(overlay.resources).toEqual([relative(OVERLAY_DIR, K8S_DIR)]);
    expect(overlay.namespace).toEqual(expect.any(String));
    const count = overlay.replicas.find((r: Json) => r.name === statefulSet.metadata.name).count;
    const patched = parseDocument(overlay.patches[0].patch).toJS();
    const env = patched.spec.template.spec.containers[0].env;
    expect(env.find((e: Json) => e.name === 'CAIRN_INITIAL_CLUSTER_SIZE').value).toBe(String(count));
  });
});

/** kubectl, if this machine has one (it renders kustomizations without a cluster). */
function findKubectl(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const path = join(dir, 'kubectl');
    if (dir && existsSync(path)) return path;
  }
  return undefined;
}
const kubectl = findKubectl();
const kustomize = (dir: string): Json[] =>
  parseAllDocuments(execFileSync(kubectl!, ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 })).map((d) => d.toJS());
const byKindAndName = (a: Json, b: Json) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`);

// Not every machine has kubectl (CI installs none); the structure checks above run everywhere.
(kubectl ? describe : describe.skip)('kubectl kustomize (kubectl found on PATH)', () => {
  it('renders deploy/k8s to exactly its manifests', () => {
    expect(kustomize(K8S_DIR).sort(byKindAndName)).toEqual(base.map((m) => m.object).sort(byKindAndName));
  });

  it('renders the overlay into its namespace, valid, with required anti-affinity and initial size = replicas', () => {
    const rendered = kustomize(OVERLAY_DIR);
    const overlay = parseYamlFile(join(OVERLAY_DIR, 'kustomization.yaml'));
    for (const object of rendered) expect(object.metadata.namespace).toBe(overlay.namespace);
    expect(schemaErrors(rendered)).toEqual(rendered.map(() => undefined));
    const sts = rendered.find((o) => o.kind === 'StatefulSet');
    const env = sts.spec.template.spec.containers[0].env;
    expect(env.find((e: Json) => e.name === 'CAIRN_INITIAL_CLUSTER_SIZE').value).toBe(String(sts.spec.replicas));
    expect(env.map((e: Json) => e.name).sort()).toEqual([...STATEFULSET_ENV].sort());
    const antiAffinity = sts.spec.template.spec.affinity.podAntiAffinity;
    expect(antiAffinity.preferredDuringSchedulingIgnoredDuringExecution).toBeUndefined();
    expect(antiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey).toBe('kubernetes.io/hostname');
  });
});

// ---- Dockerfile and compose file ----

interface Instruction {
  keyword: string;
  args: string;
  stage: number;
}

/** The Dockerfile's instructions (continuation lines joined, comments dropped), each with its stage. */
function dockerInstructions(path: string): Instruction[] {
  const joined = readFileSync(path, 'utf8').split('\n').filter((line) => !/^\s*#/.test(line)).join('\n').replace(/\\\n/g, ' ');
  let stage = -1;
  return joined.split('\n').filter((line) => line.trim()).map((line) => {
    const [, keyword, args] = /^\s*(\S+)\s*(.*)$/.exec(line)!;
    if (keyword!.toUpperCase() === 'FROM') stage++;
    return { keyword: keyword!.toUpperCase(), args: args!.trim(), stage };
  });
}

const DOCKERFILE = join(ROOT, 'deploy', 'Dockerfile');
const docker = dockerInstructions(DOCKERFILE);
const finalStage = Math.max(...docker.map((i) => i.stage));
const runtime = docker.filter((i) => i.stage === finalStage);
const lastOf = (keyword: string) => runtime.filter((i) => i.keyword === keyword).pop()?.args;

/** ENV lines as a map: both `ENV A=1 B=2` and `ENV A 1`. */
function dockerEnv(): Map<string, string> {
  const env = new Map<string, string>();
  for (const { args } of runtime.filter((i) => i.keyword === 'ENV')) {
    const pairs = args.match(/\S+=("[^"]*"|\S+)/g);
    if (pairs) for (const pair of pairs) env.set(pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1).replace(/^"|"$/g, ''));
    else env.set(args.split(/\s+/)[0]!, args.split(/\s+/).slice(1).join(' '));
  }
  return env;
}

/**
 * The modules the TypeScript under dir requires at run time: each file is transpiled as
 * tsc emits it (imports used only as types are dropped) and its require() calls collected.
 */
function runtimeRequires(dir: string): { file: string; module: string }[] {
  const files = readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  return files.flatMap((f) => {
    const source = readFileSync(join(dir, f), 'utf8');
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText;
    return [...js.matchAll(/\brequire\((['"])([^'"]+)\1\)/g)].map((m) => ({ file: join(relative(ROOT, dir), f), module: m[2]! }));
  });
}

/** Development dependencies that production code loads only when a test asks for them. */
const DEV_ONLY_REQUIRES = [{ file: 'src/storage/db.ts', module: 'memory-level' }];

describe('deploy/Dockerfile', () => {
  it('builds with the commands CI runs on a Node 26 base, then drops the dev dependencies', () => {
    const arg = docker.find((i) => i.keyword === 'ARG' && i.args.startsWith('NODE_IMAGE='));
    expect(arg?.args).toMatch(/^NODE_IMAGE=node:26-/);
    const build = docker.filter((i) => i.stage === 0 && i.keyword === 'RUN').map((i) => i.args).join(' && ');
    expect(build).toMatch(/npm ci\b[\s\S]*npm run build[\s\S]*npm prune --omit=dev/);
  });

  it('runs `cairn serve` as uid 10001 with the data volume and the ports of the manifests', () => {
    expect(JSON.parse(lastOf('ENTRYPOINT')!)).toEqual(['node', '/app/dist/src/cli/main.js']);
    expect(JSON.parse(lastOf('CMD')!)).toEqual(container.args);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(`/app/${pkg.bin.cairn}`).toBe('/app/dist/src/cli/main.js');
    expect(existsSync(join(ROOT, 'src', 'cli', 'main.ts'))).toBe(true);
    expect(lastOf('USER')).toBe(`${RUN_AS_USER}:${pod.securityContext.runAsGroup}`);
    expect(lastOf('VOLUME')).toBe(envValue('CAIRN_DATA_DIR'));
    const exposed = lastOf('EXPOSE')!.split(/\s+/).map(Number).sort();
    expect(exposed).toEqual(container.ports.map((p: Json) => p.containerPort).sort());
    const env = dockerEnv();
    for (const name of ['CAIRN_DATA_DIR', 'CAIRN_CLIENT_ADDR', 'CAIRN_PEER_ADDR', 'CAIRN_HTTP_ADDR']) {
      expect({ name, value: env.get(name) }).toEqual({ name, value: envValue(name) });
    }
    for (const name of env.keys()) if (name.startsWith('CAIRN_')) expect({ name, known: KNOWN_ENV.has(name) }).toEqual({ name, known: true });
  });

  it('the runtime stage holds what the server imports: dist/src, dist/gen and the production dependencies', () => {
    const copied = runtime.filter((i) => i.keyword === 'COPY').map((i) => i.args.split(/\s+/).filter((a) => !a.startsWith('--'))[0]);
    expect(copied).toEqual(expect.arrayContaining(['/app/package.json', '/app/node_modules', '/app/dist/src', '/app/dist/gen']));
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    const runtimeDeps = new Set(Object.keys(pkg.dependencies));
    const packageOf = (m: string) => (m.startsWith('@') ? m.split('/').slice(0, 2).join('/') : m.split('/')[0]!);
    const requires = [...runtimeRequires(join(ROOT, 'src')), ...runtimeRequires(join(ROOT, 'gen'))];
    expect(requires.length).toBeGreaterThan(0);
    for (const { file, module } of requires) {
      if (DEV_ONLY_REQUIRES.some((d) => d.file === file && d.module === module)) continue;
      if (module.startsWith('.')) {
        // A relative import must stay inside src/ or gen/, the two folders the image copies.
        const target = relative(ROOT, join(ROOT, dirname(file), module));
        expect({ file, module, inImage: /^(src|gen)\//.test(target) }).toEqual({ file, module, inImage: true });
      } else if (!module.startsWith('node:')) {
        expect({ file, module, production: runtimeDeps.has(packageOf(module)) }).toEqual({ file, module, production: true });
      }
    }
  });

  it('.dockerignore at the root (the build context) keeps local state out', () => {
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim());
    expect(ignored).toEqual(expect.arrayContaining(['.git', 'node_modules', 'dist', 'data']));
  });
});

describe('deploy/compose.yaml', () => {
  const compose = parseYamlFile(join(ROOT, 'deploy', 'compose.yaml'));
  const services = Object.entries(compose.services as Record<string, Json>);
  const peerPort = portOf(envValue('CAIRN_PEER_ADDR'));

  it('runs three nodes of the image, each with its id, every member as a static peer, and a named volume', () => {
    expect(services.map(([name]) => name)).toEqual(['cairn-1', 'cairn-2', 'cairn-3']);
    for (const [name, service] of services) {
      const env = service.environment;
      expect(service.image).toBe(container.image);
      expect(existsSync(join(ROOT, 'deploy', service.build.context, service.build.dockerfile))).toBe(true);
      expect(env.CAIRN_ID).toBe(name.split('-')[1]);
      expect(env.CAIRN_PEERS).toBe(services.map(([peer]) => `${peer.split('-')[1]}=${peer}:${peerPort}`).join(','));
      expect(portOf(env.CAIRN_PEER_ADDR)).toBe(peerPort);
      // Advertised to the peers, which forward Cluster calls to the leader's client address.
      expect(env.CAIRN_CLIENT_ADDR).toBe(`${name}:${containerPort('client')}`);
      expect(service.hostname).toBe(name);
      const [volume, mountPath] = service.volumes[0].split(':');
      expect(mountPath).toBe(envValue('CAIRN_DATA_DIR'));
      expect(Object.keys(compose.volumes)).toContain(volume);
      for (const key of Object.keys(env)) expect({ key, known: KNOWN_ENV.has(key) }).toEqual({ key, known: true });
    }
  });

  it('publishes client ports 7001-7003 on the host\'s loopback only, onto ports the image exposes', () => {
    const exposed = lastOf('EXPOSE')!.split(/\s+/).map(Number);
    services.forEach(([, service], i) => {
      for (const mapping of service.ports) {
        const [host, hostPort, target] = mapping.split(':');
        expect({ mapping, host }).toEqual({ mapping, host: '127.0.0.1' });
        expect(exposed).toContain(Number(target));
        if (Number(target) === containerPort('client')) expect(Number(hostPort)).toBe(7001 + i);
      }
    });
  });
});

/**
 * A strategic merge patch as kustomize applies it to the fields the TLS overlay touches:
 * lists of named items merge by name, other lists are replaced, null deletes a field.
 */
function strategicMerge(target: Json, patch: Json): Json {
  if (Array.isArray(patch)) {
    if (!Array.isArray(target) || !patch.every((item) => item && typeof item === 'object' && 'name' in item)) return structuredClone(patch);
    const merged = structuredClone(target);
    for (const item of patch) {
      const i = merged.findIndex((m: Json) => m.name === item.name);
      if (i >= 0) merged[i] = strategicMerge(merged[i], item);
      else merged.push(structuredClone(item));
    }
    return merged;
  }
  if (patch === null || typeof patch !== 'object' || target === null || typeof target !== 'object') return structuredClone(patch);
  const merged = structuredClone(target);
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete merged[key];
    else merged[key] = key in merged ? strategicMerge(merged[key], value) : structuredClone(value);
  }
  return merged;
}

/** Why a probe is not a single HTTP GET on the named HTTP port (undefined: it is). */
function httpProbeProblem(probe: Json, httpPortName: string): string | undefined {
  const handlers = ['grpc', 'httpGet', 'tcpSocket', 'exec'].filter((h) => probe?.[h]);
  if (handlers.length !== 1 || handlers[0] !== 'httpGet') return `handlers ${handlers.join(', ') || 'none'}`;
  if (probe.httpGet.port !== httpPortName) return `port ${probe.httpGet.port}`;
  return undefined;
}

const wildcardMatches = (pattern: string, host: string) =>
  pattern.startsWith('*.') ? host.slice(host.indexOf('.') + 1) === pattern.slice(2) && !host.slice(0, host.indexOf('.')).includes('.') : pattern === host;

describe('deploy/examples/tls', () => {
  const kustomization = parseYamlFile(join(TLS_OVERLAY_DIR, 'kustomization.yaml'));
  const patchFile = kustomization.patches?.[0]?.path;
  const patch = parseYamlFile(join(TLS_OVERLAY_DIR, patchFile));
  const tlsStatefulSet = strategicMerge(statefulSet, patch);
  const tlsPod = tlsStatefulSet.spec.template.spec;
  const tlsContainer = tlsPod.containers.find((c: Json) => c.name === 'cairn');
  const certManager = parseYamlDocuments(join(TLS_OVERLAY_DIR, 'certificates.yaml'));
  const env = (name: string) => tlsContainer.env.find((e: Json) => e.name === name)?.value;

  it('builds on deploy/k8s, lists files that exist, and patches the StatefulSet', () => {
    expect(kustomization.kind).toBe('Kustomization');
    expect(kustomization.resources).toContain(relative(TLS_OVERLAY_DIR, K8S_DIR));
    for (const file of kustomization.resources.filter((r: string) => !r.startsWith('..'))) expect({ file, exists: existsSync(join(TLS_OVERLAY_DIR, file)) }).toEqual({ file, exists: true });
    expect(kustomization.patches[0].target).toEqual({ kind: 'StatefulSet', name: statefulSet.metadata.name });
  });

  it('the patched StatefulSet validates against the schemas and uses no unknown field', () => {
    expect(schemaErrors([tlsStatefulSet])).toEqual([undefined]);
    expect(unknownFieldErrors([tlsStatefulSet])).toEqual([[]]);
  });

  it('probes over HTTPS on the HTTP port (the kubelet\'s gRPC probe does not speak TLS), and a patch that leaves grpc in is caught', () => {
    const httpPort = tlsContainer.ports.find((p: Json) => p.containerPort === portOf(env('CAIRN_HTTP_ADDR') ?? envValue('CAIRN_HTTP_ADDR')))?.name;
    expect(httpPort).toBe('http');
    for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) expect({ probe, problem: httpProbeProblem(tlsContainer[probe], httpPort) }).toEqual({ probe, problem: undefined });
    expect(tlsContainer.readinessProbe.httpGet.path).toBe('/readyz');
    expect(tlsContainer.livenessProbe.httpGet.path).toBe('/healthz');
    // The HTTP port serves HTTPS once the client port has TLS (src/server/http-tls.ts).
    for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) expect({ probe, scheme: tlsContainer[probe].httpGet.scheme }).toEqual({ probe, scheme: 'HTTPS' });
    expect(tlsStatefulSet.spec.template.metadata.annotations['prometheus.io/scheme']).toBe('https');
    const careless = structuredClone(patch);
    delete careless.spec.template.spec.containers[0].livenessProbe.grpc;
    const merged = strategicMerge(statefulSet, careless).spec.template.spec.containers[0];
    expect(httpProbeProblem(merged.livenessProbe, 'http')).toMatch(/handlers grpc, httpGet/);
  });

  it('every TLS file the environment names is on a mounted volume; the variables are serve flags', () => {
    const names: string[] = tlsContainer.env.map((e: Json) => e.name);
    for (const name of names) expect({ name, known: KNOWN_ENV.has(name) }).toEqual({ name, known: true });
    for (const name of ['CAIRN_CERT_FILE', 'CAIRN_KEY_FILE', 'CAIRN_PEER_CERT_FILE', 'CAIRN_PEER_KEY_FILE', 'CAIRN_PEER_CA_FILE']) {
      const file: string = env(name);
      const mount = tlsContainer.volumeMounts.find((m: Json) => file?.startsWith(`${m.mountPath}/`));
      expect({ name, mounted: Boolean(mount), volume: Boolean(mount && tlsPod.volumes.some((v: Json) => v.name === mount.name)) }).toEqual({ name, mounted: true, volume: true });
    }
  });

  it('the client-port Secret and the CSI issuer are the cert-manager objects the overlay creates', () => {
    const kinds = certManager.map((o) => `${o.apiVersion}/${o.kind}`);
    expect(new Set(kinds)).toEqual(new Set(['cert-manager.io/v1/Issuer', 'cert-manager.io/v1/Certificate']));
    const certificates = certManager.filter((o) => o.kind === 'Certificate');
    const issuers = new Set(certManager.filter((o) => o.kind === 'Issuer').map((o) => o.metadata.name));
    for (const c of certificates) expect({ certificate: c.metadata.name, issuer: issuers.has(c.spec.issuerRef.name) }).toEqual({ certificate: c.metadata.name, issuer: true });
    const clientSecret = tlsPod.volumes.find((v: Json) => v.name === 'client-tls').secret.secretName;
    expect(certificates.map((c) => c.spec.secretName)).toContain(clientSecret);
    const csi = tlsPod.volumes.find((v: Json) => v.name === 'peer-tls').csi;
    expect(csi.driver).toBe('csi.cert-manager.io');
    expect(issuers.has(csi.volumeAttributes['csi.cert-manager.io/issuer-name'])).toBe(true);
  });

  it('a pod\'s peer certificate names its advertised peer host, and the client certificate covers every pod\'s advertised client host', () => {
    const namespace = kustomization.namespace;
    const values: Record<string, string> = {};
    for (const spec of SERVE_FLAGS) values[spec.flag] = spec.default;
    for (const e of tlsContainer.env) {
      const spec = SERVE_FLAGS.find((f) => f.env === e.name);
      if (spec && typeof e.value === 'string') values[spec.flag] = e.value;
    }
    const clientCertificate = certManager.find((o) => o.kind === 'Certificate' && o.spec.secretName === 'cairn-client-tls');
    for (const ordinal of [0, 1, 4]) {
      const podName = `${statefulSet.metadata.name}-${ordinal}`;
      const placed = placeInStatefulSet({ ...values, 'pod-name': podName, namespace }, {});
      const peerHost = placed['advertise-peer-addr']!.split(':')[0];
      const csiName = tlsPod.volumes.find((v: Json) => v.name === 'peer-tls').csi.volumeAttributes['csi.cert-manager.io/dns-names']
        .replace('${POD_NAME}', podName).replace('${POD_NAMESPACE}', namespace);
      expect(csiName).toBe(peerHost);
      const clientHost = placed['advertise-client-addr']!.split(':')[0]!;
      expect({ clientHost, covered: clientCertificate.spec.dnsNames.some((n: string) => wildcardMatches(n, clientHost)) }).toEqual({ clientHost, covered: true });
    }
    expect(clientCertificate.spec.dnsNames).toContain(`${clientService.metadata.name}.${namespace}.svc`);
  });

  (kubectl ? it : it.skip)('kubectl kustomize renders the StatefulSet this test checks, in the overlay\'s namespace, and the cert-manager objects', () => {
    const rendered = kustomize(TLS_OVERLAY_DIR);
    const renderedSet = rendered.find((o) => o.kind === 'StatefulSet');
    // Kustomize puts a patch's new list items first: compare named lists as sets.
    const byName = (value: Json): Json =>
      Array.isArray(value)
        ? value.map(byName).sort((x: Json, y: Json) => String(x?.name ?? '').localeCompare(String(y?.name ?? '')))
        : value && typeof value === 'object' ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, byName(v)])) : value;
    expect(byName(renderedSet)).toEqual(byName({ ...tlsStatefulSet, metadata: { ...tlsStatefulSet.metadata, namespace: kustomization.namespace } }));
    expect(rendered.filter((o) => o.apiVersion === 'cert-manager.io/v1').map((o) => o.metadata.namespace)).toEqual(certManager.map(() => kustomization.namespace));
  });
});
