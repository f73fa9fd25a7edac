/**
 * Where the ring-buffer page header keeps the commit word and where data starts
 * (events/header_page), so a reader can ship only the bytes a page really holds:
 * a page read while the kernel is still writing it is mostly zeros, and an urgent
 * probe's page usually carries one event of a few dozen bytes in 4 KiB.
 */
export interface PageLayout {
  commitOffset: number;
  /** 8 on 64-bit kernels: also the size of the missed-events count stored after the data. */
  commitSize: number;
  dataOffset: number;
}

/** Bits 30 and 31 of the commit word flag missed events; the low 27 bits are the data length (as the host reads it). */
const COMMIT_MASK = (1 << 27) - 1;
const MISSED_STORED = 1 << 30;

/** The layout from header_page's text, or undefined if it does not say (then pages go whole). */
export function parsePageLayout(headerPage: string): PageLayout | undefined {
  const field = (name: string): { offset: number; size: number } | undefined => {
    const m = new RegExp(`field:[^;]*\\b${name};\\s*offset:(\\d+);\\s*size:(\\d+);`).exec(headerPage);
    return m === null ? undefined : { offset: Number(m[1]), size: Number(m[2]) };
  };
  const commit = field("commit");
  const data = field("data");
  if (commit === undefined || data === undefined || (commit.size !== 4 && commit.size !== 8)) return undefined;
  if (commit.offset + 4 > data.offset) return undefined;
  return { commitOffset: commit.offset, commitSize: commit.size, dataOffset: data.offset };
}

/**
 * How many of the `n` bytes read into `buf` at `off` carry data: the header, the
 * committed events, and the missed-events count when the kernel stored one. Never
 * more than `n`; `n` when the header makes no sense (the host judges the page).
 */
export function usedBytes(buf: Buffer, off: number, n: number, layout: PageLayout | undefined): number {
  if (layout === undefined || n < layout.dataOffset) return n;
  const word = buf.readUInt32LE(off + layout.commitOffset);
  const used = layout.dataOffset + (word & COMMIT_MASK) + (word & MISSED_STORED ? layout.commitSize : 0);
  return used <= n ? used : n;
}

const TYPE_PADDING = 29;

/**
 * Event records in a run's pages (page i at i * pageSize, `lastLength` bytes in the last), counted
 * up to `limit`: time records and padding are not events. A record that makes no sense ends the
 * count (the host judges the page); with no layout nothing is known and the answer is `limit`.
 */
export function countEvents(data: Buffer, count: number, pageSize: number, lastLength: number, layout: PageLayout | undefined, limit: number): number {
  if (layout === undefined) return limit;
  let events = 0;
  for (let i = 0; i < count && events < limit; i++) {
    const off = i * pageSize;
    const n = i < count - 1 ? pageSize : lastLength;
    if (n < layout.dataOffset) break;
    const end = off + Math.min(n, layout.dataOffset + (data.readUInt32LE(off + layout.commitOffset) & COMMIT_MASK));
    let p = off + layout.dataOffset;
    while (p + 4 <= end && events < limit) {
      const hdr = data.readUInt32LE(p);
      const typeLen = hdr & 31;
      if (typeLen >= 1 && typeLen <= 28) {
        events++;
        p += 4 + typeLen * 4;
      } else if (typeLen === 0 || typeLen === TYPE_PADDING) {
        if (typeLen === TYPE_PADDING && hdr >>> 5 === 0) break; // the rest of the page is padding
        if (p + 8 > end) break;
        const len = data.readUInt32LE(p + 4); // includes its own word
        if (len < 4) break;
        if (typeLen === 0) events++;
        p += 4 + len;
      } else p += 8; // time extend or absolute time stamp: two words
    }
  }
  return events;
}
