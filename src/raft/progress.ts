import { assert } from '../assert';

/**
 * What a leader knows about one follower's log.
 *
 * probe:     the leader does not know where the logs match; it sends one AppendRequest
 *            and waits for its answer before sending another.
 * replicate: the logs match up to `matchIndex`; the leader streams AppendRequests
 *            optimistically, keeping at most `maxInflight` unanswered ones carrying at
 *            most `maxInflightBytes` (entryBytes) between them; when nothing is in
 *            flight one AppendRequest goes whatever its size, so progress is never stuck.
 *
 * snapshot:  the follower needs entries the leader's log no longer holds; the shell is
 *            streaming it a snapshot. Nothing is appended to it until the shell reports
 *            the transfer (reportSnapshot) or the follower acknowledges an index at or
 *            beyond `pendingSnapshot` (the leader's snapshot index when the transfer began).
 *
 * A lost AppendRequest would leave either state waiting forever, so the leader
 * notes when it last sent a probe and when it last heard an acknowledgement: a
 * heartbeat answer (the follower is reachable) after a long enough silence means
 * the AppendRequest was lost, and it is sent again (see `isStalled`).
 */
export class Progress {
  state: 'probe' | 'replicate' | 'snapshot' = 'probe';
  /** In snapshot state: an acknowledgement at or beyond this index ends it. */
  pendingSnapshot = 0;
  matchIndex = 0;
  nextIndex: number;
  /** In probe state: an AppendRequest is out and unanswered. */
  probeSent = false;
  /** Heard from this follower since the last check-quorum round. */
  recentlyActive = false;
  /** The leader's tick when this follower last answered (promotion and transfer want a live one). */
  heardAtTick = -Infinity;
  private probeSentAtTick = 0;
  private acknowledgedAtTick = 0;
  /** Last index and entry bytes of each unanswered AppendRequest, oldest first. */
  private readonly inflight: { lastIndex: number; bytes: number }[] = [];
  private inflightBytes = 0;

  constructor(
    nextIndex: number,
    private readonly maxInflight: number,
    private readonly maxInflightBytes: number,
    nowTick: number,
  ) {
    assert(maxInflight >= 1, () => `maxInflight must be >= 1, got ${maxInflight}`);
    assert(maxInflightBytes >= 1, () => `maxInflightBytes must be >= 1, got ${maxInflightBytes}`);
    this.nextIndex = nextIndex;
    this.acknowledgedAtTick = nowTick;
  }

  /** Whether the leader may send another AppendRequest now. */
  canSend(): boolean {
    if (this.state === 'snapshot') return false;
    return this.state === 'probe' ? !this.probeSent : this.inflight.length < this.maxInflight;
  }

  inflightCount(): number {
    return this.inflight.length;
  }

  /** Entry bytes of the unanswered AppendRequests. */
  inflightByteCount(): number {
    return this.inflightBytes;
  }

  /**
   * How many entry bytes the next AppendRequest may carry, or 0 when the byte window is
   * full. With nothing in flight the whole window is free (and the caller sends at
   * least one entry whatever its size).
   */
  availableInflightBytes(): number {
    return Math.max(0, this.maxInflightBytes - this.inflightBytes);
  }

  /** Records an AppendRequest whose entries end at `lastIndex` and carry `bytes`. */
  sent(lastIndex: number, bytes: number, nowTick: number): void {
    assert(this.state !== 'snapshot', 'an AppendRequest to a follower receiving a snapshot');
    if (this.state === 'probe') {
      this.probeSent = true;
      this.probeSentAtTick = nowTick;
      return;
    }
    assert(lastIndex >= this.nextIndex - 1, () => `sent up to ${lastIndex} below next ${this.nextIndex}`);
    if (this.inflight.length === 0) this.acknowledgedAtTick = nowTick; // the silence starts now
    this.inflight.push({ lastIndex, bytes });
    this.inflightBytes += bytes;
    this.nextIndex = lastIndex + 1;
  }

  /** The follower holds the leader's log up to `index`. Returns whether that is news. */
  acknowledge(index: number, nowTick: number): boolean {
    while (this.inflight.length > 0 && this.inflight[0]!.lastIndex <= index) {
      this.inflightBytes -= this.inflight.shift()!.bytes;
    }
    if (index <= this.matchIndex) return false;
    this.matchIndex = index;
    this.acknowledgedAtTick = nowTick;
    this.nextIndex = Math.max(this.nextIndex, index + 1);
    if (this.state === 'probe' || (this.state === 'snapshot' && index >= this.pendingSnapshot)) this.becomeReplicate();
    return true;
  }

  /**
   * Whether an AppendRequest has gone unanswered for `quietTicks` while the follower
   * is known to be reachable: it was lost, and must be sent again.
   */
  isStalled(nowTick: number, quietTicks: number): boolean {
    if (this.state === 'snapshot') return false; // the shell reports the transfer's end
    if (this.state === 'probe') return this.probeSent && nowTick - this.probeSentAtTick >= quietTicks;
    return this.inflight.length > 0 && nowTick - this.acknowledgedAtTick >= quietTicks;
  }

  becomeProbe(nextIndex: number): void {
    assert(nextIndex > this.matchIndex, () => `probe from ${nextIndex} at or below match ${this.matchIndex}`);
    this.state = 'probe';
    this.nextIndex = nextIndex;
    this.probeSent = false;
    this.clearInflight();
  }

  /** A snapshot covering up to `snapshotIndex` is on its way to the follower. */
  becomeSnapshot(snapshotIndex: number): void {
    assert(snapshotIndex > this.matchIndex, () => `snapshot at ${snapshotIndex} at or below match ${this.matchIndex}`);
    this.state = 'snapshot';
    this.pendingSnapshot = snapshotIndex;
    this.probeSent = false;
    this.clearInflight();
  }

  /**
   * The snapshot transfer ended. Installed at `installedIndex`: the follower durably
   * holds the leader's log up to there (a snapshot holds committed entries only), which
   * is an acknowledgement; it ends the snapshot state if it reaches `pendingSnapshot`,
   * else (an older transfer's snapshot) probing goes on from there. Failed: probe again,
   * but paused as if a probe were out, so the next attempt waits until a heartbeat answer
   * shows the follower is reachable (isStalled), not a retry storm.
   */
  snapshotEnded(installedIndex: number | undefined, nowTick: number): void {
    assert(this.state === 'snapshot', () => `snapshot transfer ended in state ${this.state}`);
    if (installedIndex !== undefined && installedIndex > this.matchIndex) {
      this.matchIndex = installedIndex;
      this.acknowledgedAtTick = nowTick;
    }
    if (installedIndex !== undefined && this.matchIndex >= this.pendingSnapshot) return this.becomeReplicate();
    this.becomeProbe(this.matchIndex + 1);
    if (installedIndex === undefined) {
      this.probeSent = true;
      this.probeSentAtTick = nowTick;
    }
  }

  private becomeReplicate(): void {
    this.state = 'replicate';
    this.nextIndex = this.matchIndex + 1;
    this.probeSent = false;
    this.clearInflight();
  }

  private clearInflight(): void {
    this.inflight.length = 0;
    this.inflightBytes = 0;
  }
}
