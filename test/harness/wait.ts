/** Waiting on conditions, never on fixed sleeps: the machine is noisy and TCG is slow. */
import { setTimeout as sleep } from "node:timers/promises";

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== null && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const why = lastErr instanceof Error ? ` (last error: ${lastErr.message})` : "";
      throw new Error(`timed out after ${opts.timeoutMs ?? 60_000} ms waiting for ${what}${why}`);
    }
    await sleep(opts.intervalMs ?? 100);
  }
}
