/**
 * Everything the CLI prints: tables, event lines (human and JSON), error lines.
 *
 * JSON event objects (`vesper watch --json`, one per line):
 *   guest, probe, event ("system/event"), cpu (number), ts (guest CLOCK_MONOTONIC ns,
 *   always a decimal STRING: uint64 ns pass 2^53 after ~104 days of uptime),
 *   received (host wall clock ISO-8601 when the listener decoded it), pid, comm,
 *   seq (JetStream stream sequence, number), lost_before (number),
 *   then the event's own fields flattened: int/uint as numbers when they are safe
 *   integers, else decimal strings; str as strings; raw bytes as lower-case hex.
 *   A field whose name is one of the keys above is written as `field_<name>` (in the
 *   human format too, e.g. sched_process_exit's own `pid` next to the common pid).
 * Loss records: {"loss": {guest, probe, cpu, kernel_lost, pages_lost, read_lost, seq}}.
 *
 * JSON rule objects (`vesper rules --json`, one array): id, guest, service, source ("file" or
 * "api"), rule (the rule as written), probes [{probe, loaded}], last_fired ({at, reason} or
 * null), inactive_reason (null when the rule is in effect).
 */
import { api, ErrorCode, type VesperError } from "@vesper/protocol";
import { ApiError } from "./client.js";

type Json = string | number | boolean | null | Json[] | { [k: string]: Json };

const RESERVED = new Set(["guest", "probe", "event", "cpu", "ts", "received", "pid", "comm", "seq", "lost_before", "loss"]);

/** A bigint as a number when it is a safe integer, else a decimal string. */
export function bigintToJson(v: bigint): number | string {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
}

export function fieldToJson(f: api.FieldValue | undefined): Json {
  const k = f?.kind;
  if (k === undefined) return null;
  switch (k.$case) {
    case "int":
    case "uint":
      return bigintToJson(k.value);
    case "str":
      return k.value;
    case "raw":
      return Buffer.from(k.value).toString("hex");
  }
}

/** Host wall clock of a unix-ns timestamp, ISO-8601 with ms (empty when unset). */
export function isoOfUnixNs(ns: bigint): string {
  return ns === 0n ? "" : new Date(Number(ns / 1_000_000n)).toISOString();
}

export function eventToJson(res: api.WatchEventsResponse): Record<string, Json> | undefined {
  const k = res.kind;
  if (k === undefined) return undefined;
  if (k.$case === "loss") {
    const l = k.value;
    return {
      loss: {
        guest: l.guest,
        probe: l.probe,
        cpu: l.cpu,
        kernel_lost: bigintToJson(l.kernelLost),
        pages_lost: bigintToJson(l.pagesLost),
        read_lost: bigintToJson(l.readLost),
        seq: bigintToJson(res.streamSeq),
      },
    };
  }
  const e = k.value;
  const out: Record<string, Json> = {
    guest: e.guest,
    probe: e.probe,
    event: e.event,
    cpu: e.cpu,
    ts: e.ts.toString(),
    received: isoOfUnixNs(e.receivedUnixNs),
    pid: e.pid,
    comm: e.comm,
    seq: bigintToJson(res.streamSeq),
    lost_before: bigintToJson(e.lostBefore),
  };
  for (const [name, value] of Object.entries(e.fields)) {
    out[RESERVED.has(name) ? `field_${name}` : name] = fieldToJson(value);
  }
  return out;
}

function fieldToText(f: api.FieldValue | undefined): string {
  const v = fieldToJson(f);
  if (typeof v === "string") return v === "" || /[\s"=]/.test(v) ? JSON.stringify(v) : v;
  return String(v);
}

/** `<received> <guest>/<probe> cpu<N> <event> pid=<pid> comm=<comm> k=v ...` (loss: a warning line). */
export function formatEventLine(res: api.WatchEventsResponse): string | undefined {
  const k = res.kind;
  if (k === undefined) return undefined;
  if (k.$case === "loss") {
    const l = k.value;
    return `${new Date().toISOString()} ${l.guest}/${l.probe} cpu${l.cpu} WARNING events lost: kernel_lost=${l.kernelLost} pages_lost=${l.pagesLost} read_lost=${l.readLost}`;
  }
  const e = k.value;
  const parts = [
    isoOfUnixNs(e.receivedUnixNs) || "-",
    `${e.guest}/${e.probe}`,
    `cpu${e.cpu}`,
    e.event,
    `pid=${e.pid}`,
    `comm=${fieldToText({ kind: { $case: "str", value: e.comm } })}`,
  ];
  for (const [name, value] of Object.entries(e.fields)) {
    parts.push(`${RESERVED.has(name) ? `field_${name}` : name}=${fieldToText(value)}`);
  }
  if (e.lostBefore > 0n) parts.push(`(${e.lostBefore} lost before)`);
  return parts.join(" ");
}

export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

export function guestStateName(s: api.GuestState): string {
  switch (s) {
    case api.GuestState.GUEST_STATE_ONLINE:
      return "online";
    case api.GuestState.GUEST_STATE_OFFLINE:
      return "offline";
    case api.GuestState.GUEST_STATE_STOPPED:
      return "stopped";
    default:
      return "unknown";
  }
}

/** "12s ago", "5m ago", "3h ago", "2d ago" or "never". */
export function ago(unixMs: bigint, now = Date.now()): string {
  if (unixMs <= 0n) return "never";
  const s = Math.max(0, Math.round((now - Number(unixMs)) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172_800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86_400)}d ago`;
}

export function formatGuests(guests: readonly api.Guest[], now = Date.now()): string {
  if (guests.length === 0) return "no guests known yet: start a guest with the Vesper frontend";
  return formatTable(
    ["ID", "STATE", "KERNEL", "PROBES", "LAST SEEN"],
    guests.map((g) => [
      g.id,
      g.stoppedReason ? `${guestStateName(g.state)} (${g.stoppedReason})` : guestStateName(g.state),
      g.kernelRelease || "-",
      g.loadedProbes.join(",") || "-",
      ago(g.lastSeenUnixMs, now),
    ]),
  );
}

/** The non-zero drop counters of a guest, snake_case (see docs/security.md). */
export function dropsToJson(d: api.GuestDrops): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const [k, v] of Object.entries(d)) {
    if (typeof v === "bigint" && v !== 0n) out[k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = bigintToJson(v);
  }
  return out;
}

export function guestToJson(g: api.Guest): Record<string, Json> {
  return {
    id: g.id,
    state: guestStateName(g.state),
    ...(g.stoppedReason ? { stopped_reason: g.stoppedReason } : {}),
    kernel: g.kernelRelease,
    boot_id: g.bootId,
    transport: g.transport,
    probes: g.loadedProbes,
    last_seen: g.lastSeenUnixMs > 0n ? new Date(Number(g.lastSeenUnixMs)).toISOString() : null,
    ...(g.drops === undefined ? {} : { drops: dropsToJson(g.drops) }),
  };
}

/** "system/event" names a probe produces: its tracepoints, and its kprobes and uprobes as vesper_<probe>/<name>. */
export function probeEvents(p: api.ProbeInfo): string[] {
  const spec = p.spec;
  if (spec === undefined) return [];
  return [
    ...spec.tracepoints.map((t) => `${t.system}/${t.event}`),
    ...spec.kprobes.map((k) => `vesper_${spec.name || p.name}/${k.name}`),
    ...spec.uprobes.map((u) => `vesper_${spec.name || p.name}/${u.name}`),
  ];
}

/** Where a uprobe goes: "PATH:SYMBOL[+OFF]" or "PATH:0xFILEOFFSET". */
function uprobeAt(u: { path: string; symbol: string; offset: bigint }): string {
  if (u.symbol === "") return `${u.path}:0x${u.offset.toString(16)}`;
  return `${u.path}:${u.symbol}${u.offset > 0n ? `+${u.offset}` : ""}`;
}

export function formatProbes(probes: readonly api.ProbeInfo[]): string {
  if (probes.length === 0) return "no probes in the library";
  return formatTable(
    ["NAME", "DESCRIPTION", "EVENTS"],
    probes.map((p) => [p.name, p.description || "-", probeEvents(p).join(",") || "-"]),
  );
}

export function probeToJson(p: api.ProbeInfo): Record<string, Json> {
  return { name: p.name, description: p.description, source: p.source, events: probeEvents(p) };
}

/** `vesper probes --describe NAME`: requirements, then each event with its fields. */
export function formatProbeDescription(p: api.ProbeInfo): string {
  const spec = p.spec;
  const lines = [`${p.name}: ${p.description || "-"}`, `  source: ${p.source || "-"}`];
  if (spec !== undefined) {
    const needs = [
      ...spec.tracepoints.map((t) => `tracepoint ${t.system}:${t.event}${t.filter ? ` (filter: ${t.filter})` : ""}`),
      ...spec.kprobes.map((k) => `kprobe on ${k.symbol} -> vesper_${spec.name}/${k.name}${k.filter ? ` (filter: ${k.filter})` : ""}`),
      ...spec.uprobes.map((u) => `${u.isReturn ? "uretprobe" : "uprobe"} on ${uprobeAt(u)} -> vesper_${spec.name}/${u.name}${u.filter ? ` (filter: ${u.filter})` : ""}`),
    ];
    lines.push("  needs:", ...needs.map((n) => `    ${n}`));
  }
  const docs = new Map(p.events.map((e) => [e.name, e]));
  lines.push("  events:");
  for (const name of probeEvents(p)) {
    const d = docs.get(name);
    lines.push(`    ${name}${d?.doc ? `: ${d.doc}` : ""}`);
    for (const f of d?.fields ?? []) lines.push(`      ${f.name}: ${f.doc}`);
  }
  return lines.join("\n");
}

export function probeDescriptionToJson(p: api.ProbeInfo): Record<string, Json> {
  const docs = new Map(p.events.map((e) => [e.name, e]));
  return {
    ...probeToJson(p),
    tracepoints: (p.spec?.tracepoints ?? []).map((t) => ({ system: t.system, event: t.event, filter: t.filter })),
    kprobes: (p.spec?.kprobes ?? []).map((k) => ({ name: k.name, symbol: k.symbol, fetch_args: k.fetchArgs, filter: k.filter })),
    uprobes: (p.spec?.uprobes ?? []).map((u) => ({ name: u.name, at: uprobeAt(u), return: u.isReturn, fetch_args: u.fetchArgs, filter: u.filter })),
    event_docs: probeEvents(p).map((name) => {
      const d = docs.get(name);
      return { name, doc: d?.doc ?? "", fields: Object.fromEntries((d?.fields ?? []).map((f) => [f.name, f.doc])) };
    }),
  };
}

// ---- watch rules ---------------------------------------------------------------------------------

export function ruleSourceName(s: api.RuleSource): string {
  switch (s) {
    case api.RuleSource.RULE_SOURCE_FILE:
      return "file";
    case api.RuleSource.RULE_SOURCE_API:
      return "api";
    default:
      return "unknown";
  }
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A value in a summary: bare unless it would read ambiguously. */
function summaryValue(v: unknown): string {
  if (typeof v === "string") return v === "" || /[\s,{}|()"=<>!]/.test(v) ? JSON.stringify(v) : v;
  if (Array.isArray(v)) return `(${v.map(summaryValue).join("|")})`;
  return JSON.stringify(v);
}

const OP_TEXT: Readonly<Record<string, string>> = { eq: "=", ne: "!=", gt: ">", ge: ">=", lt: "<", le: "<=", in: " in ", not_in: " not in " };

/** `{"comm": "httpd", "signal": {"ne": 0}}` -> `{comm=httpd,signal!=0}` ("" when there are none). */
function fieldsSummary(fields: unknown): string {
  if (!isObj(fields) || Object.keys(fields).length === 0) return "";
  const parts: string[] = [];
  for (const [name, p] of Object.entries(fields)) {
    if (!isObj(p)) parts.push(`${name}=${summaryValue(p)}`);
    else for (const [op, v] of Object.entries(p)) parts.push(`${name}${OP_TEXT[op] ?? ` ${op} `}${summaryValue(v)}`);
  }
  return `{${parts.join(",")}}`;
}

/** One condition of a rule's `when`, short: `exit{comm=httpd,signal!=0}`, `vmm:GUEST_PANICKED`, `process/exit{...}`. */
export function conditionSummary(c: unknown): string {
  if (!isObj(c) || Object.keys(c).length !== 1) return JSON.stringify(c);
  const [kind, body] = Object.entries(c)[0]!;
  switch (kind) {
    case "exit":
    case "listen_closed":
      return `${kind}${fieldsSummary(body)}`;
    case "vmm":
      return `vmm:${String(body)}`;
    case "agent_lost":
      return "agent_lost";
    case "event": {
      if (!isObj(body)) break;
      const names = body.name === undefined ? "*" : Array.isArray(body.name) ? body.name.join("|") : String(body.name);
      return `${String(body.probe)}/${names}${fieldsSummary(body.fields)}`;
    }
  }
  return JSON.stringify(c);
}

/** One action, short: `pacemaker:web@node1`, `webhook:http://...`, `exec:/usr/local/bin/hook`. */
export function actionSummary(a: unknown): string {
  if (!isObj(a) || Object.keys(a).length !== 1) return JSON.stringify(a);
  const [kind, b] = Object.entries(a)[0]!;
  if (!isObj(b)) return JSON.stringify(a);
  switch (kind) {
    case "pacemaker":
      return `pacemaker:${String(b.resource)}@${String(b.node)}`;
    case "webhook":
      return `webhook:${String(b.url)}`;
    case "exec":
      return `exec:${Array.isArray(b.argv) ? String(b.argv[0]) : "?"}`;
  }
  return JSON.stringify(a);
}

function ruleObject(r: api.RuleInfo): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(r.json);
    return isObj(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The rule's conditions (alternatives) and actions, summarised for the table. */
export function ruleSummary(r: api.RuleInfo): { when: string; actions: string } {
  const o = ruleObject(r);
  if (o === undefined) return { when: "(not valid JSON)", actions: "-" };
  const when = Array.isArray(o.when) ? o.when.map(conditionSummary).join(" | ") : "-";
  const actions = Array.isArray(o.actions) && o.actions.length > 0 ? o.actions.map(actionSummary).join(", ") : "-";
  return { when: when || "-", actions };
}

export function formatRules(rules: readonly api.RuleInfo[], now = Date.now()): string {
  if (rules.length === 0) {
    return "no watch rules: add one with `vesper rules add FILE`, or start vesper-host with --rules FILE";
  }
  const table = formatTable(
    ["ID", "GUEST", "SERVICE", "WHEN", "ACTIONS", "SOURCE", "PROBES", "LAST FIRED"],
    rules.map((r) => {
      const { when, actions } = ruleSummary(r);
      return [
        r.id,
        r.guest,
        r.service,
        when,
        actions,
        ruleSourceName(r.source) + (r.inactiveReason ? " (inactive)" : ""),
        r.probes.map((p) => (p.loaded ? p.probe : `${p.probe}(not loaded)`)).join(",") || "-",
        r.lastFired === undefined ? "never" : ago(r.lastFired.firedUnixMs, now),
      ];
    }),
  );
  const notes = rules.filter((r) => r.inactiveReason).map((r) => `${r.id} (${ruleSourceName(r.source)}) is not in effect: ${r.inactiveReason}`);
  return notes.length === 0 ? table : [table, "", ...notes].join("\n");
}

export function ruleToJson(r: api.RuleInfo): Record<string, Json> {
  const obj = ruleObject(r);
  return {
    id: r.id,
    guest: r.guest,
    service: r.service,
    source: ruleSourceName(r.source),
    rule: obj === undefined ? r.json : (obj as { [k: string]: Json }),
    probes: r.probes.map((p) => ({ probe: p.probe, loaded: p.loaded })),
    last_fired:
      r.lastFired === undefined
        ? null
        : { at: new Date(Number(r.lastFired.firedUnixMs)).toISOString(), reason: { ...r.lastFired.reason } },
    inactive_reason: r.inactiveReason || null,
  };
}

/** What the failed command was about, to name it in the error line. */
export interface ErrorContext {
  addr: string;
  guest?: string;
  probe?: string;
  /** Rule id (rules add / rm). */
  rule?: string;
  /** Which rule of the input `rules add` was sending: "rules.json", "rules.json rules[2]". */
  ruleInput?: string;
  timeoutMs?: number;
  /** Whether the call carried a bearer token. */
  hasToken?: boolean;
}

/** The error line (plus indented detail lines) printed to stderr, starting with "vesper: ". */
export function formatError(err: VesperError, ctx: ErrorContext): string {
  const g = ctx.guest ?? "?";
  const p = ctx.probe ?? "?";
  const r = ctx.rule ?? "?";
  let line: string;
  if (err instanceof ApiError && !err.fromGateway && err.code === ErrorCode.Unavailable) {
    line = `cannot reach the Vesper gateway at ${ctx.addr} (UNAVAILABLE): is vesper-host running? start it with \`make host\` or set --addr`;
  } else if (err instanceof ApiError && !err.fromGateway && err.code === ErrorCode.Timeout) {
    const within = ctx.timeoutMs === undefined ? "" : ` within ${ctx.timeoutMs} ms`;
    line = `the Vesper gateway at ${ctx.addr} did not answer${within} (DEADLINE_EXCEEDED): raise --timeout, or check vesper-host's log`;
  } else {
    switch (err.code) {
      case ErrorCode.UnknownGuest:
        line = `guest ${g} is not known: see \`vesper guests\``;
        break;
      case ErrorCode.UnknownProbe:
        line = `probe ${p} is not known: see \`vesper probes\``;
        break;
      case ErrorCode.ProbeAlreadyLoaded:
        line = `probe ${p} is already loaded in guest ${g}: unload it first with \`vesper rmmod ${g} ${p}\``;
        break;
      case ErrorCode.ProbeNotLoaded:
        line = `probe ${p} is not loaded in guest ${g}: see \`vesper guests\``;
        break;
      case ErrorCode.GuestOffline:
        line = `guest ${g} is offline: start it, or forget its probe with \`vesper rmmod --force ${g} ${p}\``;
        break;
      case ErrorCode.KernelRefused:
        line = `guest ${g}'s kernel refused probe ${p}: ${err.message}`;
        break;
      case ErrorCode.UnknownRule:
        line = `rule ${r} is not known: see \`vesper rules\``;
        break;
      case ErrorCode.RuleAlreadyExists:
        line = `rule ${r} already exists: replace it with \`vesper rules add --replace FILE\`, or remove it first with \`vesper rules rm ${r}\``;
        break;
      case ErrorCode.RuleInFile:
      case ErrorCode.RuleNotAllowed:
        line = `${err.message} (${err.code})`;
        break;
      case ErrorCode.InvalidArgument:
      case ErrorCode.TooLarge:
        line =
          ctx.ruleInput === undefined
            ? `${err.message} (${err.code})`
            : `${ctx.ruleInput} is not a valid rule: ${err.message} (${err.code}); fix it and run the command again (nothing was added)`;
        break;
      case ErrorCode.Unauthenticated:
        line = ctx.hasToken
          ? `the gateway refused the call (${err.code}): ${err.message}; check VESPER_TOKEN or --token`
          : `the gateway refused the call (${err.code}): set VESPER_TOKEN or --token`;
        break;
      case ErrorCode.PermissionDenied:
        line = `the gateway refused the call (${err.code}): ${err.message}; ask for a token that allows it`;
        break;
      default:
        line = `${err.message} (${err.code})`;
    }
  }
  return [`vesper: ${line}`, ...err.details.map((d) => `  ${d}`)].join("\n");
}
