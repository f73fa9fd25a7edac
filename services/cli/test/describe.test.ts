/** `vesper probes --describe NAME`: requirements, then every event with its documented fields. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger } from "@vesper/protocol";
import { ProbeLibrary } from "@vesper/probe-loader";
import { formatProbeDescription, probeDescriptionToJson } from "../src/index.js";

test("describe shows what a group needs and documents each event and field", async () => {
  const lib = await ProbeLibrary.load(undefined, createLogger("test"));
  const e = lib.get("network");
  const info = { name: e.spec.name, description: e.spec.description, spec: e.spec, source: e.source, events: [...e.events] };
  const text = formatProbeDescription(info);
  assert.match(text, /^network: /);
  assert.match(text, /tracepoint sock:inet_sock_set_state \(filter: oldstate == 10\)/);
  assert.match(text, /kprobe on inet_csk_listen_stop -> vesper_network\/listen_close/);
  assert.match(text, /\n    sock\/inet_sock_set_state: A listening socket/);
  assert.match(text, /\n      sport: the port that was listening/);
  const json = probeDescriptionToJson(info) as { event_docs: Array<{ name: string; fields: Record<string, string> }> };
  assert.equal(json.event_docs.length, e.spec.kprobes.length + e.spec.tracepoints.length);
  assert.ok(json.event_docs.find((d) => d.name === "vesper_network/listen_close")?.fields.port);
  // A probe file without docs still lists its events.
  const bare = formatProbeDescription({ ...info, events: [] });
  assert.match(bare, /\n    tcp\/tcp_send_reset\n/);
});
