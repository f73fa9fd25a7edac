/** `vesper probes --describe NAME`: requirements, then every event with its documented fields. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger } from "@vesper/protocol";
import { parseProbeFile, ProbeLibrary } from "@vesper/probe-loader";
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

test("describe names a probe file's uprobes by file and symbol (or file offset), and lists their events", () => {
  const spec = parseProbeFile(
    JSON.stringify({
      name: "accepts",
      uprobes: [
        { name: "accept", path: "/usr/lib/libc.so.6", symbol: "accept4", fetchArgs: ["fd=%di:s32"], filter: "fd > 2" },
        { name: "ret", path: "/usr/sbin/httpd", offset: 4660, isReturn: true },
      ],
    }),
    "accepts.json",
  );
  const info = { name: spec.name, description: "", spec, source: "accepts.json", events: [] };
  const text = formatProbeDescription(info);
  assert.match(text, /uprobe on \/usr\/lib\/libc\.so\.6:accept4 -> vesper_accepts\/accept \(filter: fd > 2\)/);
  assert.match(text, /uretprobe on \/usr\/sbin\/httpd:0x1234 -> vesper_accepts\/ret/);
  assert.match(text, /\n    vesper_accepts\/accept\n    vesper_accepts\/ret/);
  const json = probeDescriptionToJson(info) as { uprobes: Array<{ at: string; return: boolean }> };
  assert.deepEqual(json.uprobes.map((u) => [u.at, u.return]), [["/usr/lib/libc.so.6:accept4", false], ["/usr/sbin/httpd:0x1234", true]]);
});
