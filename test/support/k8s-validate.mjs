// Validates Kubernetes objects with kubernetes-models, in a process of its own because the
// package is ESM only (its exports have no "require" condition), which jest's CommonJS
// runtime cannot load. Reads [{module, className, object}] as JSON on stdin and writes
// [{ok: true} | {ok: false, error}] as JSON on stdout, one result per input, in order.
import { readFileSync } from 'node:fs';

const requests = JSON.parse(readFileSync(0, 'utf8'));
const results = [];
for (const { module, className, object } of requests) {
  try {
    const Model = (await import(module))[className];
    if (typeof Model !== 'function') throw new Error(`${module} has no model ${className}`);
    new Model(object).validate();
    results.push({ ok: true });
  } catch (err) {
    results.push({ ok: false, error: err instanceof Error ? err.message : String(err) });
  }
}
process.stdout.write(JSON.stringify(results));
