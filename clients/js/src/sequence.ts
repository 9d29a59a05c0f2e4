// One conversation's ordering state: the protocol's client rules 1 and 2 (docs/protocol.md, "Order,
// duplicates and gaps"). Pure logic, no I/O: the client feeds it arrivals and asks it what to do.

import type { ChatMessage } from "./types.js";

/** What an arrival did. */
export interface Accepted {
  /** Messages now shown, in order (empty for a duplicate or a message held above a gap). */
  shown: ChatMessage[];
  /** The number was shown already, or is held already: dropped. */
  duplicate: boolean;
}

export class Sequence {
  /** The highest number shown; every number up to it was shown, in order. */
  last: number;
  /** The highest number acknowledged with `delivered` on the wire. */
  acked: number;
  /** Arrived above `last + 1`, waiting for the gap below them to close. */
  readonly held = new Map<number, ChatMessage>();
  /** Since when (ms) a gap has been open; `null` when none is. */
  gapSince: number | null = null;
  /** Reading history after a connect until caught up (rule 4). */
  resuming = false;
  /** The id of the history request in flight for this conversation, and when it was sent. */
  asking: { id: string; at: number } | null = null;

  constructor(last = 0) {
    this.last = last;
    this.acked = last;
  }

  /**
   * Rule 1 (drop what is shown already) and rule 2's first half (hold what is above a gap), then shows
   * whatever became contiguous.
   */
  accept(m: ChatMessage, now: number): Accepted {
    if (m.seq <= this.last || this.held.has(m.seq)) return { shown: [], duplicate: true };
    this.held.set(m.seq, m);
    const shown = this.drain();
    if (this.held.size === 0) this.gapSince = null;
    else if (this.gapSince === null) this.gapSince = now;
    return { shown, duplicate: false };
  }

  /** The lowest held number (the top of the gap), if any. */
  firstHeld(): number | null {
    let min: number | null = null;
    for (const seq of this.held.keys()) if (min === null || seq < min) min = seq;
    return min;
  }

  /**
   * The history request that closes the gap (rule 2's second half): exactly the missing range, when the gap
   * has been open for `graceMs`; `null` otherwise.
   */
  gapRequest(now: number, graceMs: number, maxLimit: number): { afterSeq: number; limit: number } | null {
    const first = this.firstHeld();
    if (first === null || this.gapSince === null || now - this.gapSince < graceMs) return null;
    return { afterSeq: this.last, limit: Math.max(1, Math.min(maxLimit, first - this.last - 1)) };
  }

  /**
   * History no longer holds numbers up to `firstSeq - 1`: skip past them (what is held at or above
   * `firstSeq` then shows). Answers the numbers given up, or `null` when there were none.
   */
  skipTo(firstSeq: number, now: number): { from: number; to: number; shown: ChatMessage[] } | null {
    if (firstSeq - 1 <= this.last) return null;
    const from = this.last + 1;
    const to = firstSeq - 1;
    for (const seq of [...this.held.keys()]) if (seq <= to) this.held.delete(seq);
    this.last = to;
    // Nothing held is a duplicate of the skipped range any more; show what became contiguous.
    const shown = this.drain();
    this.gapSince = this.held.size === 0 ? null : now;
    return { from, to, shown };
  }

  /** Shows what is held right above `last`, in order, up to the next gap. */
  private drain(): ChatMessage[] {
    const shown: ChatMessage[] = [];
    for (let next = this.held.get(this.last + 1); next; next = this.held.get(this.last + 1)) {
      this.held.delete(this.last + 1);
      this.last += 1;
      shown.push(next);
    }
    return shown;
  }
}
