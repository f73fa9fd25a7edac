/**
 * Per-CPU page order for one loaded probe. Pages carry a sequence number that
 * starts at 1 on load; a jump forward means pages were lost between guest and
 * host (counted, never hidden), a step back means a replay (dropped, counted).
 */
export type SeqVerdict = { readonly accept: true; readonly pagesLost: bigint } | { readonly accept: false };

export class PageSequencer {
  private readonly last = new Map<number, bigint>();
  pagesLost = 0n;
  replays = 0n;

  check(cpu: number, seq: bigint): SeqVerdict {
    const prev = this.last.get(cpu) ?? 0n;
    if (seq <= prev) {
      this.replays++;
      return { accept: false };
    }
    this.last.set(cpu, seq);
    const lost = seq - prev - 1n;
    this.pagesLost += lost;
    return { accept: true, pagesLost: lost };
  }
}
