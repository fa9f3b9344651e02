import { assert } from '../assert';

/**
 * What a leader knows about one follower's log.
 *
 * probe:     the leader does not know where the logs match; it sends one AppendRequest
 *            and waits for its answer (or a heartbeat answer) before sending another.
 * replicate: the logs match up to `matchIndex`; the leader streams AppendRequests
 *            optimistically, keeping at most `maxInflight` unanswered ones.
 */
export class Progress {
  state: 'probe' | 'replicate' = 'probe';
  matchIndex = 0;
  nextIndex: number;
  /** In probe state: an AppendRequest is out and unanswered. */
  probeSent = false;
  /** Heard from this follower since the last check-quorum round. */
  recentlyActive = false;
  /**
   * Heartbeat answers received in replicate state with nothing acknowledged in
   * between: a lost AppendRequest leaves the window waiting forever otherwise.
   */
  heartbeatsWithoutAck = 0;
  /** Last index of each unanswered AppendRequest, oldest first. */
  private readonly inflight: number[] = [];

  constructor(
    nextIndex: number,
    private readonly maxInflight: number,
  ) {
    assert(maxInflight >= 1, `maxInflight must be >= 1, got ${maxInflight}`);
    this.nextIndex = nextIndex;
  }

  /** Whether the leader may send another AppendRequest now. */
  canSend(): boolean {
    return this.state === 'probe' ? !this.probeSent : this.inflight.length < this.maxInflight;
  }

  inflightCount(): number {
    return this.inflight.length;
  }

  /** Records an AppendRequest whose entries end at `lastIndex`. */
  sent(lastIndex: number): void {
    if (this.state === 'probe') {
      this.probeSent = true;
      return;
    }
    assert(lastIndex >= this.nextIndex - 1, `sent up to ${lastIndex} below next ${this.nextIndex}`);
    this.inflight.push(lastIndex);
    this.nextIndex = lastIndex + 1;
  }

  /** The follower holds the leader's log up to `index`. Returns whether that is news. */
  acknowledge(index: number): boolean {
    while (this.inflight.length > 0 && this.inflight[0]! <= index) this.inflight.shift();
    if (index <= this.matchIndex) return false;
    this.heartbeatsWithoutAck = 0;
    this.matchIndex = index;
    this.nextIndex = Math.max(this.nextIndex, index + 1);
    if (this.state === 'probe') this.becomeReplicate();
    return true;
  }

  becomeProbe(nextIndex: number): void {
    assert(nextIndex > this.matchIndex, `probe from ${nextIndex} at or below match ${this.matchIndex}`);
    this.state = 'probe';
    this.nextIndex = nextIndex;
    this.probeSent = false;
    this.heartbeatsWithoutAck = 0;
    this.inflight.length = 0;
  }

  private becomeReplicate(): void {
    this.state = 'replicate';
    this.nextIndex = this.matchIndex + 1;
    this.probeSent = false;
    this.inflight.length = 0;
  }
}
