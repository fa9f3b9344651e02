import { Server, ServerDuplexStream } from '@grpc/grpc-js';
import { WatchCreateRequest, WatchRequest, WatchResponse, WatchServer, WatchService } from '../../gen/cairn/kv/v1/kv';
import { isInvariantViolation } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { DEFAULT_WATCH_LIMITS, WatchHub, WatchSource, WatchSpec, WatchStream } from '../kv/watch-hub';
import { HistoryListener } from '../kv/state-machine';
import { authGateOf, callIdentityOf, compactTo, header, malformedError, servedDefinition, ServiceContext, throwIfRefused } from './services';
import { toGrpcError } from './status';
import { validateRange } from './validate';

/**
 * How often a watch that asked for progress notifications and heard nothing since gets one
 * (etcd: 10 minutes; shorter here, so that a client's resume point stays fresh).
 */
export const WATCH_PROGRESS_INTERVAL_MS = 5_000;
/** How often the leader checks whether the history has grown past --auto-compaction-revisions. */
export const AUTO_COMPACTION_CHECK_INTERVAL_MS = 5_000;

/** What the node's watch support needs of its state machine. */
export interface WatchedStateMachine extends WatchSource {
  setHistoryListener(listener: HistoryListener | undefined): void;
}

export interface NodeWatchOptions {
  autoCompactionRevisions: number;
  watchBufferBytes: number;
}

/**
 * The Watch service of one node, its hub (fed by the node's own state machine, on a follower
 * too), its progress notifications, and automatic compaction when this node leads.
 */
export class NodeWatch {
  private readonly calls = new Set<ServerDuplexStream<WatchRequest, WatchResponse>>();
  private readonly timers: NodeJS.Timeout[] = [];
  private compacting = false;

  private constructor(
    readonly hub: WatchHub,
    private readonly context: ServiceContext,
    private readonly options: NodeWatchOptions,
  ) {}

  /** Registers the Watch service on `server` and starts the node's hub and timers. */
  static attach(server: Server, context: ServiceContext, stateMachine: WatchedStateMachine, options: NodeWatchOptions): NodeWatch {
    const hub = new WatchHub(stateMachine, { ...DEFAULT_WATCH_LIMITS, maxWatchBufferBytes: options.watchBufferBytes }, (revision) => header(context, revision));
    stateMachine.setHistoryListener(hub);
    const watch = new NodeWatch(hub, context, options);
    server.addService(servedDefinition(WatchService), watch.service());
    watch.timers.push(setInterval(() => hub.notifyProgress(), WATCH_PROGRESS_INTERVAL_MS));
    if (options.autoCompactionRevisions > 0) watch.timers.push(setInterval(() => watch.compactIfDue(stateMachine), AUTO_COMPACTION_CHECK_INTERVAL_MS));
    for (const timer of watch.timers) timer.unref();
    return watch;
  }

  /** Ends every watch stream (the node is stopping): clients see the stream end and go elsewhere. */
  close(): void {
    for (const timer of this.timers) clearInterval(timer);
    for (const call of this.calls) call.end();
    this.calls.clear();
  }

  service(): WatchServer {
    return { watch: (call) => this.serve(call) };
  }

  private serve(call: ServerDuplexStream<WatchRequest, WatchResponse>): void {
    let stream: WatchStream;
    try {
      stream = this.hub.openStream();
    } catch (err) {
      call.emit('error', toGrpcError(err));
      return;
    }
    this.calls.add(call);
    let blocked = false;
    let scheduled = false;
    let ended = false;
    const pump = () => {
      scheduled = false;
      while (!blocked && !ended) {
        const response = stream.shift();
        if (!response) return;
        if (!call.write(response)) {
          blocked = true;
          call.once('drain', () => {
            blocked = false;
            pump();
          });
        }
      }
    };
    stream.onReadable = () => {
      if (scheduled) return;
      scheduled = true;
      queueMicrotask(pump);
    };
    const end = (error?: unknown) => {
      if (ended) return;
      ended = true;
      stream.close();
      this.calls.delete(call);
      if (error) call.emit('error', toGrpcError(error));
      else call.end();
    };
    call.on('data', (request: WatchRequest) => {
      try {
        this.handle(request, stream, call);
      } catch (err) {
        if (isInvariantViolation(err)) this.context.replica.halt(err);
        end(err);
      }
    });
    call.on('end', () => end());
    call.on('cancelled', () => end());
    call.on('error', () => end());
  }

  private handle(request: WatchRequest, stream: WatchStream, call: ServerDuplexStream<WatchRequest, WatchResponse>): void {
    const malformed = malformedError(request);
    if (malformed) throw malformed;
    switch (request.requestUnion?.$case) {
      case 'createRequest': {
        const spec = this.watchSpec(request.requestUnion.value, call);
        if (typeof spec === 'string') {
          stream.push({ response: refusal(this.context, spec), watchId: 0, bytes: 0 });
          return;
        }
        stream.create(spec);
        return;
      }
      case 'cancelRequest':
        if (!stream.cancel(request.requestUnion.value.watchId)) throw new CairnError(ErrorCode.INVALID_ARGUMENT, `this stream has no watch ${request.requestUnion.value.watchId} to cancel`);
        return;
      case 'progressRequest':
        stream.requestProgress();
        return;
      case undefined:
        throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'a WatchRequest must hold create_request, cancel_request or progress_request');
    }
  }

  /** The watch a create request asks for, or why it is refused (bad keys, or no read permission on them). */
  private watchSpec(create: WatchCreateRequest, call: ServerDuplexStream<WatchRequest, WatchResponse>): WatchSpec | string {
    try {
      const range = validateRange({ key: create.key, rangeEnd: create.rangeEnd, prefix: create.prefix, limit: 0, keysOnly: false, consistency: 0 }, this.context.limits);
      authGateOf(this.context).requireRange(callIdentityOf(call), range.start, range.end);
      return { start: range.start, end: range.end, startRevision: create.startRevision, prevKv: create.prevKv, progressNotify: create.progressNotify };
    } catch (err) {
      if (!(err instanceof CairnError)) throw err;
      return `${err.code}: ${err.message}`;
    }
  }

  /** On the leader only: compaction changes replicated state, so one node proposes it for all. */
  private compactIfDue(stateMachine: WatchedStateMachine): void {
    const { replica, requestTimeoutMs, router } = this.context;
    if (this.compacting || replica.node.role !== 'leader') return;
    const target = stateMachine.revision() - this.options.autoCompactionRevisions;
    if (target <= stateMachine.compactedRevision()) return;
    this.compacting = true;
    const scope = { deadlineMs: Date.now() + requestTimeoutMs, signal: AbortSignal.timeout(requestTimeoutMs) };
    compactTo(target, async (op) => throwIfRefused(await router.write({ op, proposedAtUnixMs: 0 }, scope)), this.context)
      .then(
        (done) => this.context.logger.debug({ compactRevision: done.compactRevision }, 'auto compaction'),
        (err) => this.context.logger.warn({ err: (err as Error).message, target }, 'auto compaction failed; retried at the next check'),
      )
      .finally(() => (this.compacting = false));
  }
}

/** A create request refused: canceled at once, with the reason. */
function refusal(context: ServiceContext, reason: string): WatchResponse {
  return { header: header(context), watchId: 0, created: true, canceled: true, compactRevision: 0, cancelReason: reason, events: [] };
}
