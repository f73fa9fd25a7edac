/**
 * Unit tests for the ftrace decoder with synthetic pages built in the test.
 *   node --import tsx --test services/probe-listener/test/ftrace-decoder.test.ts
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode, FrameError } from "@vesper/protocol";
import {
  PageDecoder,
  decodeWaitStatus,
  parseEventFormat,
  parseHeaderPage,
  type EventFormatDesc,
  type HeaderPageLayout,
} from "../src/ftrace/index.js";
import { PageBuilder, encodeRecord } from "./helpers/ftrace-page-builder.js";
import { COMMON, EXIT_FORMAT_TEXT, HEADER_PAGE_TEXT, TEST_FORMAT_TEXT } from "./helpers/ftrace-formats.js";

const header: HeaderPageLayout = parseHeaderPage(HEADER_PAGE_TEXT);
const everything: EventFormatDesc = parseEventFormat(TEST_FORMAT_TEXT, "vesper_test");
const exitFmt: EventFormatDesc = parseEventFormat(EXIT_FORMAT_TEXT, "vesper_process");

function decoder(opts?: ConstructorParameters<typeof PageDecoder>[2]): PageDecoder {
  return new PageDecoder([everything, exitFmt], header, opts);
}

const T0 = 1_000_000_000n;

describe("parseHeaderPage", () => {
  it("reads the 64-bit layout", () => {
    assert.deepEqual(header, { timestampOffset: 0, commitOffset: 8, commitSize: 8, dataOffset: 16, dataSize: 4080 });
  });
  it("reads a 32-bit layout", () => {
    const t = HEADER_PAGE_TEXT.replace("offset:8;\tsize:8", "offset:8;\tsize:4").replace("offset:16;\tsize:4080", "offset:12;\tsize:4084");
    assert.deepEqual(parseHeaderPage(t), { timestampOffset: 0, commitOffset: 8, commitSize: 4, dataOffset: 12, dataSize: 4084 });
  });
  it("rejects missing fields and bad sizes with FrameError", () => {
    for (const t of ["", "field: u64 timestamp; offset:0; size:8;", HEADER_PAGE_TEXT.replace("size:8;\tsigned:1", "size:3;\tsigned:1")]) {
      assert.throws(() => parseHeaderPage(t), (e: unknown) => e instanceof FrameError && e.code === ErrorCode.Malformed);
    }
  });
});

describe("parseEventFormat", () => {
  it("classifies every kind of field", () => {
    assert.equal(everything.name, "everything");
    assert.equal(everything.system, "vesper_test");
    assert.equal(everything.id, 1001);
    assert.equal(everything.size, 96);
    assert.deepEqual(
      everything.common.map((f) => [f.name, f.type, f.offset, f.size, f.signed, f.kind]),
      [
        ["common_type", "unsigned short", 0, 2, false, "int"],
        ["common_flags", "unsigned char", 2, 1, false, "int"],
        ["common_preempt_count", "unsigned char", 3, 1, false, "int"],
        ["common_pid", "int", 4, 4, true, "int"],
      ],
    );
    const byName = new Map(everything.fields.map((f) => [f.name, f]));
    assert.deepEqual(byName.get("comm"), { name: "comm", type: "__data_loc char[]", offset: 24, size: 4, signed: true, kind: "data_loc_string", elementSize: 1 });
    assert.deepEqual(byName.get("name"), { name: "name", type: "char[16]", offset: 40, size: 16, signed: false, kind: "char_array", elementSize: 1, arrayLength: 16 });
    assert.equal(byName.get("rel")?.kind, "rel_loc_string");
    assert.equal(byName.get("blob")?.kind, "data_loc_array");
    assert.deepEqual(byName.get("args"), { name: "args", type: "unsigned long[3]", offset: 64, size: 24, signed: false, kind: "array", elementSize: 8, arrayLength: 3 });
    assert.equal(byName.get("code")?.kind, "int");
    assert.equal(byName.get("code")?.signed, true);
  });

  it("parses a real sched_process_exit format", () => {
    const f = parseEventFormat(
      `name: sched_process_exit
ID: 369
format:
${COMMON}
	field:char comm[16];	offset:8;	size:16;	signed:0;
	field:pid_t pid;	offset:24;	size:4;	signed:1;
	field:int prio;	offset:28;	size:4;	signed:1;
	field:bool group_dead;	offset:32;	size:1;	signed:0;

print fmt: "comm=%s pid=%d prio=%d group_dead=%s", REC->comm, REC->pid, REC->prio, REC->group_dead ? "true" : "false"
`,
      "sched",
    );
    assert.deepEqual(
      f.fields.map((x) => `${x.type} ${x.name}@${x.offset}/${x.size}:${x.kind}`),
      ["char[16] comm@8/16:char_array", "pid_t pid@24/4:int", "int prio@28/4:int", "bool group_dead@32/1:int"],
    );
    assert.equal(f.size, 33);
  });

  it("treats macro array lengths, structs and odd sizes sensibly", () => {
    const f = parseEventFormat(
      `name: odd\nID: 7\nformat:\n${COMMON}\n\tfield:char comm[TASK_COMM_LEN];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:u32 regs[NR];\toffset:24;\tsize:12;\tsigned:0;\n\tfield:struct foo f;\toffset:36;\tsize:8;\tsigned:0;\n\tfield:u8 three;\toffset:44;\tsize:3;\tsigned:0;\n\tfield:const char * p;\toffset:48;\tsize:8;\tsigned:0;\n`,
      "s",
    );
    assert.deepEqual(
      f.fields.map((x) => [x.name, x.kind, x.elementSize, x.arrayLength]),
      [
        ["comm", "char_array", 1, 16],
        ["regs", "array", 4, 3],
        ["f", "other", undefined, undefined],
        ["three", "other", undefined, undefined],
        ["p", "int", undefined, undefined],
      ],
    );
  });

  it("rejects malformed formats with FrameError", () => {
    const bad = [
      "",
      "name: x\nformat:\n" + COMMON,
      "ID: 3\nformat:\n" + COMMON,
      "name: x\nID: 3\n",
      "name: x\nID: -3\nformat:\n" + COMMON,
      "name: x\nID: 3\nformat:\n\tfield:int a;\toffset:99999999999;\tsize:4;\tsigned:1;\n",
      "name: x\nID: 3\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n\tfield:int a;\toffset:4;\tsize:4;\tsigned:1;\n",
      "name: x\nID: 3\nformat:\n\tfield:int __proto__;\toffset:0;\tsize:4;\tsigned:1;\n",
      "name: x\nID: 3\nformat:\n\tfield:int;\toffset:0;\tsize:4;\tsigned:1;\n",
      "name: x y\nID: 3\nformat:\n" + COMMON,
    ];
    for (const t of bad) assert.throws(() => parseEventFormat(t, "s"), FrameError, JSON.stringify(t));
    assert.throws(() => parseEventFormat("x".repeat(300_000), "s"), (e: unknown) => e instanceof FrameError && e.code === ErrorCode.TooLarge);
  });
});

describe("PageDecoder", () => {
  it("decodes small (type_len 1..28) and large (type_len 0) records with every field kind", () => {
    const blob = Uint8Array.from([1, 2]);
    const longComm = "x".repeat(150); // record > 112 bytes -> type_len 0
    const values = {
      __probe_ip: 0xffffffff81234567n,
      code: -5n,
      comm: "sleep",
      s8v: -2n,
      u8v: 250n,
      s16v: -300n,
      s32v: -70000n,
      u32v: 4_000_000_000n,
      name: "héllo",
      rel: "rel",
      blob,
      args: Uint8Array.from({ length: 24 }, (_, i) => i),
      u64v: 0xfedcba9876543210n,
    };
    const rec1 = encodeRecord(everything, 4242, values);
    const rec2 = encodeRecord(everything, -1, { ...values, comm: longComm });
    assert.ok(rec1.length <= 112 && rec2.length > 112);
    const rec3 = encodeRecord(everything, 7, { ...values, comm: "forced" });
    const page = new PageBuilder({ timestamp: T0 }).event(rec1, 10).event(rec2, 20).event(rec3, 0, true).build();

    const d = decoder().decode(page);
    assert.deepEqual(d.errors, []);
    assert.equal(d.missedEvents, 0);
    assert.equal(d.timestamp, T0);
    assert.equal(d.events.length, 3);
    const [e1, e2, e3] = d.events;
    assert.deepEqual(e1, {
      id: 1001,
      system: "vesper_test",
      name: "everything",
      ts: T0 + 10n,
      pid: 4242,
      fields: {
        __probe_ip: 0xffffffff81234567n,
        code: -5n,
        comm: "sleep",
        s8v: -2n,
        u8v: 250n,
        s16v: -300n,
        s32v: -70000n,
        u32v: 4_000_000_000n,
        name: "héllo",
        rel: "rel",
        blob,
        args: Uint8Array.from({ length: 24 }, (_, i) => i),
        u64v: 0xfedcba9876543210n,
      },
    });
    assert.equal(e2?.ts, T0 + 30n);
    assert.equal(e2?.pid, -1);
    assert.equal(e2?.fields.comm, longComm);
    assert.equal(e3?.ts, T0 + 30n);
    assert.equal(e3?.fields.comm, "forced");
    assert.equal(e3?.pid, 7);
  });

  it("array values are copies, not views of the page", () => {
    const page = new PageBuilder({ timestamp: T0 }).event(encodeRecord(everything, 1, { blob: Uint8Array.of(9, 9) })).build();
    const d = decoder().decode(page);
    page.fill(0);
    assert.deepEqual(d.events[0]?.fields.blob, Uint8Array.of(9, 9));
  });

  it("applies time extends, absolute timestamps (with the top bits restored) and padding deltas", () => {
    const rec = encodeRecord(exitFmt, 1, { code: 0n, comm: "a" });
    const big = (1n << 40n) + 12345n;
    const tsHigh = (0x1fn << 59n) + 777n; // page time with top bits set
    const abs = tsHigh + big + 1_000_000n; // absolute stamp; only its low 59 bits are stored
    const page = new PageBuilder({ timestamp: tsHigh })
      .event(rec, 100) // +100
      .timeExtend(big) // +big
      .event(rec, 0)
      .discarded(8, 50) // discarded event: its delta counts
      .event(rec, 1)
      .discarded(12, 1) // delta 1 = "no time": ignored
      .event(rec, 2)
      .absolute(abs)
      .event(rec, 3)
      .build({ nullPadding: true });
    const d = decoder().decode(page);
    assert.deepEqual(d.errors, []);
    assert.deepEqual(
      d.events.map((e) => e.ts),
      [tsHigh + 100n, tsHigh + 100n + big, tsHigh + 100n + big + 51n, tsHigh + 100n + big + 53n, abs + 3n],
    );
  });

  it("carries into bit 59 when the absolute stamp wrapped past the running time's top bits", () => {
    const rec = encodeRecord(exitFmt, 1, { code: 0n, comm: "a" });
    const running = (1n << 59n) + ((1n << 59n) - 10n); // top bits 0b00001, low bits near max
    const next = (2n << 59n) + 5n; // top bits incremented
    const page = new PageBuilder({ timestamp: running }).absolute(next).event(rec, 0).build();
    assert.equal(decoder().decode(page).events[0]?.ts, next);
  });

  it("stops at null padding (the rest of the page)", () => {
    const rec = encodeRecord(exitFmt, 1, { code: 0n, comm: "a" });
    const b = new PageBuilder({ timestamp: T0 }).event(rec, 1).raw(29); // padding, delta 0
    b.event(rec, 1); // after the null padding: must not be decoded
    const page = b.build();
    const d = decoder().decode(page);
    assert.equal(d.events.length, 1);
    assert.deepEqual(d.errors, []);
  });

  it("reports missed events: stored count, unknown count, none", () => {
    const rec = encodeRecord(exitFmt, 1, { code: 0n, comm: "a" });
    const dec = decoder();
    assert.equal(dec.decode(new PageBuilder({ timestamp: T0 }).event(rec).build()).missedEvents, 0);
    assert.equal(dec.decode(new PageBuilder({ timestamp: T0 }).event(rec).build({ missed: 1234 })).missedEvents, 1234);
    assert.equal(dec.decode(new PageBuilder({ timestamp: T0 }).event(rec).build({ missed: "unknown" })).missedEvents, -1);
    const d = dec.decode(new PageBuilder({ timestamp: T0 }).event(rec).build({ missed: 3 }));
    assert.equal(d.events.length, 1, "the stored count is not mistaken for a record");
    // 32-bit layout: count stored as a 4-byte unsigned long
    const h32: HeaderPageLayout = { timestampOffset: 0, commitOffset: 8, commitSize: 4, dataOffset: 12, dataSize: 4084 };
    const p32 = new PageBuilder({ timestamp: T0, dataOffset: 12, commitSize: 4 }).event(rec, 5).build({ missed: 77 });
    const d32 = new PageDecoder([exitFmt], h32).decode(p32);
    assert.equal(d32.missedEvents, 77);
    assert.equal(d32.events[0]?.ts, T0 + 5n);
  });

  it("reports per-record problems and keeps decoding", () => {
    const rec = encodeRecord(exitFmt, 1, { code: 0n, comm: "a" });
    const unknown = Buffer.from(rec);
    unknown.writeUInt16LE(999, 0);
    const short = Buffer.from(rec.subarray(0, 8)); // common fields only
    const badLoc = Buffer.from(rec);
    badLoc.writeUInt32LE((200 << 16) | 20, 24); // 200 bytes at 20: past the record
    const page = new PageBuilder({ timestamp: T0 }).event(unknown).event(short).event(badLoc).event(rec, 4).build();
    const d = decoder().decode(page);
    assert.equal(d.events.length, 2);
    assert.equal(d.events[0]?.fields.comm, "", "bad location gives an empty string");
    assert.equal(d.events[1]?.fields.comm, "a");
    assert.equal(d.errors.length, 3);
    assert.match(d.errors[0]!, /unknown event id 999/);
    assert.match(d.errors[1]!, /needs 28 bytes, has 8/);
    assert.match(d.errors[2]!, /field comm points outside the record/);
  });

  it("reports records that run past the commit, and a commit past the page", () => {
    const rec = encodeRecord(exitFmt, 1, { code: 0n, comm: "a" });
    const b = new PageBuilder({ timestamp: T0 }).event(rec);
    const ok = b.used;
    b.event(rec);
    const cut = b.build({ commit: ok + 8 }); // second record truncated by commit
    const d = decoder().decode(cut);
    assert.equal(d.events.length, 1);
    assert.match(d.errors[0]!, /past the committed data/);

    const over = new PageBuilder({ timestamp: T0, pageSize: 64 }).event(rec).build({ commit: 5000 });
    const d2 = decoder().decode(over);
    assert.equal(d2.events.length, 1);
    assert.match(d2.errors[0]!, /exceeds/);

    const lenZero = new PageBuilder({ timestamp: T0 }).raw(0, 0).build();
    assert.match(decoder().decode(lenZero).errors[0]!, /length 0 invalid/);
  });

  it("throws FrameError only for a page shorter than its header", () => {
    assert.throws(() => decoder().decode(new Uint8Array(10)), (e: unknown) => e instanceof FrameError && e.code === ErrorCode.Malformed);
    assert.deepEqual(decoder().decode(new Uint8Array(16)).events, []);
  });

  it("decodes a page that is a view into a larger buffer", () => {
    const rec = encodeRecord(exitFmt, 33, { code: 3n << 8n, comm: "viewed" });
    const page = new PageBuilder({ timestamp: T0 }).event(rec, 9).build();
    const big = Buffer.alloc(page.length + 100);
    page.copy(big, 37);
    const d = decoder().decode(big.subarray(37, 37 + page.length));
    assert.equal(d.events[0]?.fields.comm, "viewed");
    assert.equal(d.events[0]?.ts, T0 + 9n);
  });

  it("adds wait-status fields for configured events", () => {
    const dec = decoder({ waitStatusFields: new Map([["vesper_process/exit", "code"]]) });
    assert.deepEqual(dec.warnings, []);
    const statuses = [3n << 8n, 9n, 0x80n | 11n, 0n];
    const b = new PageBuilder({ timestamp: T0 });
    for (const s of statuses) b.event(encodeRecord(exitFmt, 5, { code: s, comm: "sh" }));
    b.event(encodeRecord(everything, 5, { code: 9n }));
    const d = dec.decode(b.build());
    assert.deepEqual(
      d.events.slice(0, 4).map((e) => [e.fields.exit_code, e.fields.signal, e.fields.core_dumped]),
      [
        [3n, 0n, 0n],
        [0n, 9n, 0n],
        [0n, 11n, 1n],
        [0n, 0n, 0n],
      ],
    );
    assert.equal(d.events[4]?.fields.exit_code, undefined, "only configured events get derived fields");
    assert.deepEqual(decodeWaitStatus(0x8bn), { exit_code: 0n, signal: 11n, core_dumped: 1n });
  });

  it("warns (does not fail) on wait-status config that does not match a format", () => {
    const dec = decoder({
      waitStatusFields: new Map([
        ["vesper_process/exit", "comm"],
        ["nope/nope", "code"],
      ]),
    });
    assert.equal(dec.warnings.length, 2);
  });

  it("rejects inconsistent format sets with FrameError", () => {
    assert.throws(() => new PageDecoder([exitFmt, exitFmt], header), FrameError);
    const moved = parseEventFormat(EXIT_FORMAT_TEXT.replace("ID: 1500", "ID: 1501").replace("common_type;\toffset:0", "common_type;\toffset:2"), "x");
    assert.throws(() => new PageDecoder([exitFmt, moved], header), FrameError);
    assert.throws(() => new PageDecoder([exitFmt], { ...header, commitSize: 3 }), FrameError);
    const lying: EventFormatDesc = { ...exitFmt, fields: [{ ...exitFmt.fields[0]!, offset: -1 }] };
    assert.throws(() => new PageDecoder([lying], header), FrameError);
  });
});
