/**
 * Agent loss: a guest frontend that was online and has sent nothing on its ring
 * for `lostAfterMs` is lost (one `agent/lost` event), and is back (one
 * `agent/back` event) when it speaks again. The frontend's heartbeat is its idle
 * request, which the loader holds for idleHoldMs and answers with a Ping; the
 * guest answers and posts a new one, so a live frontend speaks every idle hold.
 *
 * Pure bookkeeping with an injected clock, so the timing is unit-testable; the
 * loader feeds it and publishes what it returns.
 */
export interface AgentLost {
  guest: string;
  lastSeenMs: number;
  silentMs: number;
  bootId: string;
}

export interface AgentBack {
  guest: string;
  silentMs: number;
  rebooted: boolean;
  bootId: string;
  /** When it was reported lost (ms, the watch's clock): names the loss episode. */
  lostAtMs: number;
}

interface Entry {
  lastSeenMs: number;
  bootId: string;
  lostAtMs: number | undefined;
}

export class AgentWatch {
  private readonly guests = new Map<string, Entry>();

  constructor(readonly lostAfterMs: number) {
    if (!(lostAfterMs > 0)) throw new RangeError(`lostAfterMs must be positive, got ${lostAfterMs}`);
  }

  /** The guest sent something (bootId when it was a Hello). Returns the back notice when it had been lost. */
  seen(guest: string, nowMs: number, bootId?: string): AgentBack | undefined {
    const e = this.guests.get(guest);
    if (e === undefined) {
      this.guests.set(guest, { lastSeenMs: nowMs, bootId: bootId ?? "", lostAtMs: undefined });
      return undefined;
    }
    let back: AgentBack | undefined;
    if (e.lostAtMs !== undefined) {
      const now = bootId ?? e.bootId;
      back = { guest, silentMs: nowMs - e.lastSeenMs, rebooted: bootId !== undefined && e.bootId !== "" && bootId !== e.bootId, bootId: now, lostAtMs: e.lostAtMs };
      e.lostAtMs = undefined;
    }
    e.lastSeenMs = nowMs;
    if (bootId !== undefined) e.bootId = bootId;
    return back;
  }

  /** Guests that have just crossed the silence limit (each reported once per loss). */
  check(nowMs: number): AgentLost[] {
    const out: AgentLost[] = [];
    for (const [guest, e] of this.guests) {
      if (e.lostAtMs !== undefined) continue;
      const silentMs = nowMs - e.lastSeenMs;
      if (silentMs < this.lostAfterMs) continue;
      e.lostAtMs = nowMs;
      out.push({ guest, lastSeenMs: e.lastSeenMs, silentMs, bootId: e.bootId });
    }
    return out;
  }

  isLost(guest: string): boolean {
    return this.guests.get(guest)?.lostAtMs !== undefined;
  }

  forget(guest: string): void {
    this.guests.delete(guest);
  }
}
