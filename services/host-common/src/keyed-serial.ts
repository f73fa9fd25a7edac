/**
 * Runs tasks one at a time per key and concurrently across keys: a guest's messages
 * keep their order while no guest waits behind another's slow step (a JetStream
 * publish round trip, say). A key's chain is dropped once it drains.
 */
export class KeyedSerial {
  private readonly chains = new Map<string, { tail: Promise<void>; pending: number }>();

  /** Tasks queued or running under `key`. */
  pending(key: string): number {
    return this.chains.get(key)?.pending ?? 0;
  }

  /** Keys with work queued or running. */
  get size(): number {
    return this.chains.size;
  }

  /** Queues `task` after the key's earlier ones. A task's rejection is its own: it does not stop the chain. */
  run(key: string, task: () => Promise<void>): Promise<void> {
    let chain = this.chains.get(key);
    if (chain === undefined) this.chains.set(key, (chain = { tail: Promise.resolve(), pending: 0 }));
    chain.pending++;
    const c = chain;
    const done = c.tail.then(task).finally(() => {
      if (--c.pending === 0 && this.chains.get(key) === c) this.chains.delete(key);
    });
    c.tail = done.catch(() => undefined);
    return done;
  }
}
