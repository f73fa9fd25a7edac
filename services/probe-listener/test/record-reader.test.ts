/** Stored pages read back: the same events the decoder finds, losses said, duplicates skipped. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { api, bus, ring } from "@vesper/protocol";
import { buildDecoder } from "../src/decoder-factory.js";
import { EventRecordReader, PAGES_HEADER } from "../src/record-reader.js";

const FIX = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures", "guest-6.1");
const read = (p: string): string => readFileSync(path.join(FIX, p), "utf8");
const expected = JSON.parse(read("expected.json")) as { formats: Record<string, string>; captures: Record<string, { raw: string }> };
const formats: ring.EventFormat[] = Object.entries(expected.formats).map(([name, file]) => {
  const text = read(file);
  const [system = "", event = ""] = name.split("/");
  return { system, name: event, id: Number(/^ID: (\d+)/m.exec(text)?.[1]), format: text };
});
const spec = ring.ProbeSpec.fromPartial({
  name: "fixture",
  kprobes: [{ name: "exit", symbol: "do_exit", fetchArgs: ["code=%di:s64"], waitStatusArg: "code" }],
});
const loaded: ring.LoadedProbe = { instance: "vesper-fixture", formats, headerPage: read("header_page"), pageSize: 4096, cpus: 1, loadId: 42n };
const pages = (capture: string): Buffer[] => {
  const raw = readFileSync(path.join(FIX, expected.captures[capture]!.raw));
  const out: Buffer[] = [];
  for (let o = 0; o + 4096 <= raw.length; o += 4096) out.push(raw.subarray(o, o + 4096));
  return out;
};

function message(ps: bus.StoredPage[]): { data: Uint8Array; headers: ReturnType<typeof natsHeaders> } {
  const h = natsHeaders();
  h.set(PAGES_HEADER, "1");
  return { data: bus.StoredPages.encode({ guest: "g1", probe: "fixture", cpu: 0, receivedUnixNs: 5n, spec, loaded, pages: ps }).finish(), headers: h };
}

test("the events of stored pages are the decoder's, with wait-status fields; a page seen twice is skipped", () => {
  const [basic] = pages("basic");
  const decoded = buildDecoder(spec, loaded).decode(basic!);
  const reader = new EventRecordReader();
  const m = message([{ seq: 1n, data: basic!, pagesLostBefore: 0n }]);
  const recs = reader.records(m.data, m.headers);
  const events = recs.flatMap((r) => (r.kind?.$case === "event" ? [r.kind.value] : []));
  assert.equal(events.length, decoded.events.length);
  assert.deepEqual(events.map((e) => e.event), decoded.events.map((e) => `${e.system}/${e.name}`));
  const killed = events.find((e) => e.event === "vesper_fixture/exit" && e.pid === 206)!;
  assert.equal(killed.fields.signal?.kind?.$case === "int" && killed.fields.signal.kind.value, 9n);
  assert.equal(killed.guest, "g1");
  assert.equal(killed.pageSeq, 1n);
  assert.equal(killed.receivedUnixNs, 5n);
  assert.deepEqual(reader.records(m.data, m.headers), [], "the same page again: nothing");
  assert.equal(reader.stats.duplicatePages, 1);
});

test("losses: pages that never came, and the kernel's own count from the page header", () => {
  const [overflow] = pages("overflow");
  const reader = new EventRecordReader();
  const m = message([{ seq: 4n, data: overflow!, pagesLostBefore: 2n }]);
  const recs = reader.records(m.data, m.headers);
  const losses = recs.flatMap((r) => (r.kind?.$case === "loss" ? [r.kind.value] : []));
  assert.deepEqual(losses.map((l) => [l.pagesLost, l.kernelLost]), [[2n, 0n], [0n, 877n]]);
  const first = recs.find((r) => r.kind?.$case === "event");
  assert.equal(first?.kind?.$case === "event" && first.kind.value.lostBefore, 877n);
});

test("a single-record message passes through; garbage throws", () => {
  const reader = new EventRecordReader();
  const one = api.WatchEventsResponse.encode({ kind: { $case: "loss", value: { guest: "g", probe: "p", cpu: 0, kernelLost: 1n, pagesLost: 0n, readLost: 0n } }, streamSeq: 0n }).finish();
  assert.equal(reader.records(one)[0]?.kind?.$case, "loss");
  const h = natsHeaders();
  h.set(PAGES_HEADER, "3");
  assert.throws(() => reader.records(Uint8Array.from([0xff, 0xff, 0xff]), h));
});
