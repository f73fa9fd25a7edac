/**
 * pid -> comm of one guest, learnt from the events that carry both, so that
 * events that only know common_pid can still say which program it was.
 * Bounded: when full it starts over rather than grow.
 */
const MAX_ENTRIES = 65_536;

export class CommCache {
  private readonly map = new Map<number, string>();

  set(pid: number, comm: string): void {
    if (pid <= 0 || comm === "") return;
    if (this.map.size >= MAX_ENTRIES && !this.map.has(pid)) this.map.clear();
    this.map.set(pid, comm);
  }

  get(pid: number): string {
    return this.map.get(pid) ?? "";
  }

  delete(pid: number): void {
    this.map.delete(pid);
  }
}
