/** Events ordered by virtual time, then by the order they were scheduled (so runs replay exactly). */
export class EventQueue {
  private heap: { time: number; seq: number; run: () => void }[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  push(time: number, run: () => void): void {
    this.heap.push({ time, seq: this.seq++, run });
    this.up(this.heap.length - 1);
  }

  peekTime(): number | undefined {
    return this.heap[0]?.time;
  }

  pop(): { time: number; run: () => void } | undefined {
    const top = this.heap[0];
    const last = this.heap.pop();
    if (top && last && this.heap.length > 0) {
      this.heap[0] = last;
      this.down(0);
    }
    return top;
  }

  private less(a: number, b: number): boolean {
    const x = this.heap[a]!;
    const y = this.heap[b]!;
    return x.time < y.time || (x.time === y.time && x.seq < y.seq);
  }

  private swap(a: number, b: number): void {
    [this.heap[a], this.heap[b]] = [this.heap[b]!, this.heap[a]!];
  }

  private up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(i, parent)) return;
      this.swap(i, parent);
      i = parent;
    }
  }

  private down(i: number): void {
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < this.heap.length && this.less(left, smallest)) smallest = left;
      if (right < this.heap.length && this.less(right, smallest)) smallest = right;
      if (smallest === i) return;
      this.swap(i, smallest);
      i = smallest;
    }
  }
}
