/**
 * Watch rules: when a service inside a guest counts as failed, and what to do then.
 *
 * A rules file is JSON: `{ "rules": [ Rule, ... ] }` (or a bare array). A rule:
 * ```json
 * { "service": "web", "guest": "web1",
 *   "when": [ {"exit": {"comm": "httpd", "signal": {"ne": 0}}},
 *             {"listen_closed": {"port": 80}}, {"vmm": "GUEST_PANICKED"}, {"agent_lost": true},
 *             {"event": {"probe": "process", "name": "exit", "fields": {"exit_code": {"gt": 0}}}} ],
 *   "actions": [ {"pacemaker": {"resource": "web", "node": "node1"}},
 *                {"webhook": {"url": "http://127.0.0.1:8080/hook"}}, {"exec": {"argv": ["/usr/local/bin/hook"]}} ],
 *   "cooldown_ms": 10000 }
 * ```
 * Every condition is an event name + field predicates on one probe's events (`event` is the generic
 * form; the others are shorthands), so a rule works for any probe group that publishes on
 * vesper.events.<guest>.<probe>. Conditions in `when` are alternatives (any one fires the rule).
 *
 * Field predicates: a literal (number, string, boolean) means equality; an object may hold
 * eq, ne, gt, ge, lt, le (numbers) and in, not_in (lists). Names are looked up in the event's
 * fields, then pid, comm, cpu of the event itself.
 *
 * Rules added through the API (AddRule) are one rule object each, in the same schema.
 */
import { api, checkGuestId, checkProbeName, ErrorCode, ruleId, SERVICE_NAME_RE, VesperError } from "@vesper/protocol";

export type Scalar = number | string | boolean;
export interface PredicateOps {
  eq?: Scalar;
  ne?: Scalar;
  gt?: number;
  ge?: number;
  lt?: number;
  le?: number;
  in?: Scalar[];
  not_in?: Scalar[];
}
export type Predicate = Scalar | PredicateOps;

export interface Condition {
  /** Probe (group) whose events this condition looks at: the <probe> of vesper.events.<guest>.<probe>. */
  probe: string;
  /** Event names ("system/event" or the part after the slash), compared case-insensitively. */
  names: string[];
  fields: Record<string, Predicate>;
  /** Whether the rule loads `probe` into the guest (false for host-side sources: vmm, agent). */
  load: boolean;
  /** The condition as written, for messages. */
  source: string;
}

export type Action =
  | { kind: "pacemaker"; resource: string; node: string; prefix: string[]; crmResource: string; timeoutMs: number }
  | { kind: "webhook"; url: string; timeoutMs: number; headers: Record<string, string> }
  | { kind: "exec"; argv: string[]; timeoutMs: number };

export interface Rule {
  /** "<service>@<guest>" */
  id: string;
  service: string;
  guest: string;
  when: Condition[];
  actions: Action[];
  /** After firing, further matches are ignored for this long (unless the state file says "active" again). */
  cooldownMs: number;
  /** The rule object as written, as JSON (what ListRules shows and the KV store keeps). */
  json: string;
}

/** Longest rule JSON accepted from the API (a rule is a few hundred bytes). */
export const MAX_RULE_JSON_BYTES = 64 * 1024;

function bad(where: string, msg: string): never {
  throw new VesperError(ErrorCode.InvalidArgument, `${where}: ${msg}`);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(where: string, v: unknown): string {
  if (typeof v !== "string" || v === "") bad(where, `expected a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

/** A value that becomes an argument of a command: it must not read as an option. */
function arg(where: string, v: unknown): string {
  const s = str(where, v);
  if (s.startsWith("-")) bad(where, `must not start with "-", got ${JSON.stringify(s)}`);
  return s;
}

function posInt(where: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) bad(where, `expected a whole number >= 0, got ${JSON.stringify(v)}`);
  return v;
}

function isScalar(v: unknown): v is Scalar {
  return typeof v === "number" || typeof v === "string" || typeof v === "boolean";
}

const OPS = new Set(["eq", "ne", "gt", "ge", "lt", "le", "in", "not_in"]);

function parsePredicate(where: string, v: unknown): Predicate {
  if (isScalar(v)) return v;
  if (!isObj(v)) bad(where, `expected a value or an object of ${[...OPS].join("/")}`);
  for (const [k, x] of Object.entries(v)) {
    if (!OPS.has(k)) bad(where, `unknown operator ${JSON.stringify(k)} (use ${[...OPS].join(", ")})`);
    if ((k === "in" || k === "not_in") && !(Array.isArray(x) && x.every(isScalar))) bad(`${where}.${k}`, "expected a list of values");
    if (["gt", "ge", "lt", "le"].includes(k) && typeof x !== "number") bad(`${where}.${k}`, "expected a number");
    if ((k === "eq" || k === "ne") && !isScalar(x)) bad(`${where}.${k}`, "expected a value");
  }
  return v as PredicateOps;
}

function parseFields(where: string, v: unknown): Record<string, Predicate> {
  if (v === undefined) return {};
  if (!isObj(v)) bad(where, "expected an object of field predicates");
  const out: Record<string, Predicate> = {};
  for (const [k, p] of Object.entries(v)) out[k] = parsePredicate(`${where}.${k}`, p);
  return out;
}

export function parseCondition(where: string, c: unknown): Condition {
  if (!isObj(c) || Object.keys(c).length !== 1) bad(where, 'expected one of {"exit": …}, {"listen_closed": …}, {"vmm": …}, {"agent_lost": true}, {"event": …}');
  const [kind, body] = Object.entries(c)[0]!;
  const source = JSON.stringify(c);
  switch (kind) {
    case "exit":
      return { probe: "process", names: ["exit"], fields: parseFields(`${where}.exit`, body ?? {}), load: true, source };
    case "listen_closed":
      return {
        probe: "network",
        names: ["listen_closed", "listen_close", "listen_stop"],
        fields: parseFields(`${where}.listen_closed`, body ?? {}),
        load: true,
        source,
      };
    case "vmm": {
      const ev = str(`${where}.vmm`, body);
      return { probe: "vmm", names: [ev], fields: {}, load: false, source };
    }
    case "agent_lost":
      if (body !== true) bad(`${where}.agent_lost`, "expected true");
      return { probe: "agent", names: ["agent_lost", "lost", "frontend_lost"], fields: {}, load: false, source };
    case "event": {
      if (!isObj(body)) bad(`${where}.event`, 'expected {"probe": …, "name": …, "fields": {…}}');
      const probe = str(`${where}.event.probe`, body.probe);
      const names = body.name === undefined ? [] : Array.isArray(body.name) ? body.name.map((n, i) => str(`${where}.event.name[${i}]`, n)) : [str(`${where}.event.name`, body.name)];
      if (body.load !== undefined && typeof body.load !== "boolean") bad(`${where}.event.load`, "expected true or false");
      return { probe, names, fields: parseFields(`${where}.event.fields`, body.fields), load: body.load !== false, source };
    }
    default:
      return bad(where, `unknown condition ${JSON.stringify(kind)}`);
  }
}

function parseArgv(where: string, v: unknown): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === "string")) bad(where, "expected a non-empty list of strings");
  return v as string[];
}

export function parseAction(where: string, a: unknown): Action {
  if (!isObj(a) || Object.keys(a).length !== 1) bad(where, 'expected one of {"pacemaker": …}, {"webhook": …}, {"exec": …}');
  const [kind, b] = Object.entries(a)[0]!;
  if (!isObj(b)) bad(`${where}.${kind}`, "expected an object");
  switch (kind) {
    case "pacemaker":
      return {
        kind,
        resource: arg(`${where}.pacemaker.resource`, b.resource),
        node: arg(`${where}.pacemaker.node`, b.node),
        prefix: b.prefix === undefined ? [] : parseArgv(`${where}.pacemaker.prefix`, b.prefix),
        crmResource: b.crm_resource === undefined ? "crm_resource" : str(`${where}.pacemaker.crm_resource`, b.crm_resource),
        timeoutMs: posInt(`${where}.pacemaker.timeout_ms`, b.timeout_ms, 15_000),
      };
    case "webhook": {
      const url = str(`${where}.webhook.url`, b.url);
      if (!/^https?:\/\//.test(url)) bad(`${where}.webhook.url`, "expected an http:// or https:// URL");
      const headers: Record<string, string> = {};
      if (b.headers !== undefined) {
        if (!isObj(b.headers)) bad(`${where}.webhook.headers`, "expected an object of strings");
        for (const [k, v] of Object.entries(b.headers)) headers[k] = str(`${where}.webhook.headers.${k}`, v);
      }
      return { kind, url, headers, timeoutMs: posInt(`${where}.webhook.timeout_ms`, b.timeout_ms, 5_000) };
    }
    case "exec":
      return { kind, argv: parseArgv(`${where}.exec.argv`, b.argv), timeoutMs: posInt(`${where}.exec.timeout_ms`, b.timeout_ms, 15_000) };
    default:
      return bad(where, `unknown action ${JSON.stringify(kind)}`);
  }
}

export function parseRule(where: string, r: unknown): Rule {
  if (!isObj(r)) bad(where, "expected an object");
  const service = str(`${where}.service`, r.service);
  if (!SERVICE_NAME_RE.test(service)) bad(`${where}.service`, "use A-Z a-z 0-9 _ - (up to 63)");
  const guest = str(`${where}.guest`, r.guest);
  try {
    checkGuestId(guest);
  } catch (err) {
    bad(`${where}.guest`, (err as Error).message);
  }
  if (!Array.isArray(r.when) || r.when.length === 0) bad(`${where}.when`, "expected a non-empty list of conditions");
  const when = r.when.map((c, i) => parseCondition(`${where}.when[${i}]`, c));
  for (const [i, c] of when.entries()) {
    if (!c.load) continue;
    try {
      checkProbeName(c.probe);
    } catch (err) {
      bad(`${where}.when[${i}]`, (err as Error).message);
    }
  }
  const actions = r.actions === undefined ? [] : Array.isArray(r.actions) ? r.actions.map((a, i) => parseAction(`${where}.actions[${i}]`, a)) : bad(`${where}.actions`, "expected a list");
  const cooldownMs = posInt(`${where}.cooldown_ms`, r.cooldown_ms, 10_000);
  return { id: ruleId(service, guest), service, guest, when, actions, cooldownMs, json: JSON.stringify(r) };
}

/** Parses one rule object given as JSON text (AddRule, the KV store). */
export function parseRuleText(text: string, where = "rule"): Rule {
  if (Buffer.byteLength(text) > MAX_RULE_JSON_BYTES) {
    throw new VesperError(ErrorCode.TooLarge, `${where} is ${Buffer.byteLength(text)} bytes of JSON, more than the ${MAX_RULE_JSON_BYTES} a rule may have`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new VesperError(ErrorCode.InvalidArgument, `${where} is not valid JSON: ${(err as Error).message}`);
  }
  if (Array.isArray(doc) || (isObj(doc) && Array.isArray(doc.rules))) {
    bad(where, 'expected one rule object, not a list or {"rules": [...]}: add the rules one at a time (`vesper rules add` does that)');
  }
  return parseRule(where, doc);
}

/** Parses a rules document (the text of a rules file). */
export function parseRules(text: string, file = "rules"): Rule[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new VesperError(ErrorCode.InvalidArgument, `${file} is not valid JSON: ${(err as Error).message}`);
  }
  const list = Array.isArray(doc) ? doc : isObj(doc) && Array.isArray(doc.rules) ? doc.rules : bad(file, 'expected {"rules": [ … ]} or a list of rules');
  const rules = list.map((r, i) => parseRule(`${file}: rules[${i}]`, r));
  const seen = new Set<string>();
  for (const r of rules) {
    if (seen.has(r.id)) bad(file, `two rules for service ${r.service} in guest ${r.guest}`);
    seen.add(r.id);
  }
  return rules;
}

/** Probes each guest needs loaded for its rules: guest -> probe names. */
export function probesToLoad(rules: readonly Rule[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const r of rules) {
    for (const c of r.when) {
      if (!c.load) continue;
      let s = out.get(r.guest);
      if (!s) out.set(r.guest, (s = new Set()));
      s.add(c.probe);
    }
  }
  return out;
}

// ---- matching ---------------------------------------------------------------------------------

/** A field's value as a JS number/string, or undefined when absent. */
export function fieldValue(ev: api.Event, name: string): number | string | undefined {
  const f = ev.fields[name];
  if (f?.kind !== undefined) {
    switch (f.kind.$case) {
      case "int":
      case "uint":
        return Number(f.kind.value);
      case "str":
        return f.kind.value;
      case "raw":
        return Buffer.from(f.kind.value).toString("hex");
    }
  }
  if (name === "pid") return ev.pid;
  if (name === "comm") return ev.comm;
  if (name === "cpu") return ev.cpu;
  return undefined;
}

function same(a: number | string, b: Scalar): boolean {
  if (typeof b === "boolean") return (typeof a === "number" ? a !== 0 : a === "true") === b;
  if (typeof a === "number" && typeof b === "number") return a === b;
  return String(a) === String(b);
}

export function predicateHolds(v: number | string | undefined, p: Predicate): boolean {
  if (v === undefined) return false;
  if (isScalar(p)) return same(v, p);
  const n = typeof v === "number" ? v : Number(v);
  if (p.eq !== undefined && !same(v, p.eq)) return false;
  if (p.ne !== undefined && same(v, p.ne)) return false;
  if (p.gt !== undefined && !(n > p.gt)) return false;
  if (p.ge !== undefined && !(n >= p.ge)) return false;
  if (p.lt !== undefined && !(n < p.lt)) return false;
  if (p.le !== undefined && !(n <= p.le)) return false;
  if (p.in !== undefined && !p.in.some((x) => same(v, x))) return false;
  if (p.not_in !== undefined && p.not_in.some((x) => same(v, x))) return false;
  return true;
}

export function nameMatches(names: readonly string[], event: string): boolean {
  if (names.length === 0) return true;
  const full = event.toLowerCase();
  const slash = full.indexOf("/");
  const short = slash >= 0 ? full.slice(slash + 1) : full;
  return names.some((n) => {
    const x = n.toLowerCase();
    return x === full || x === short;
  });
}

export function conditionMatches(c: Condition, ev: api.Event): boolean {
  if (ev.probe !== c.probe) return false;
  if (!nameMatches(c.names, ev.event)) return false;
  for (const [k, p] of Object.entries(c.fields)) if (!predicateHolds(fieldValue(ev, k), p)) return false;
  return true;
}

/** The first condition of `rule` that `ev` satisfies, or undefined. */
export function matchRule(rule: Rule, ev: api.Event): Condition | undefined {
  if (ev.guest !== rule.guest) return undefined;
  return rule.when.find((c) => conditionMatches(c, ev));
}

/** Why the service failed, from the event that fired the rule: every field, flattened. */
export function failureReason(ev: api.Event, c: Condition): Record<string, string | number> {
  const r: Record<string, string | number> = { probe: ev.probe, event: ev.event, condition: c.source };
  if (ev.pid !== 0) r.pid = ev.pid;
  if (ev.comm !== "") r.comm = ev.comm;
  for (const k of Object.keys(ev.fields).sort()) {
    const f = ev.fields[k]?.kind;
    if (f === undefined) continue;
    // 64-bit values beyond 2^53 (addresses) stay exact, as strings
    if ((f.$case === "int" || f.$case === "uint") && (f.value > BigInt(Number.MAX_SAFE_INTEGER) || f.value < -BigInt(Number.MAX_SAFE_INTEGER))) {
      r[k] = f.$case === "uint" ? `0x${f.value.toString(16)}` : String(f.value);
      continue;
    }
    const v = fieldValue(ev, k);
    if (v !== undefined) r[k] = v;
  }
  return r;
}
