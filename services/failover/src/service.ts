/**
 * The rules service: loads watch rules from a JSON file and from the KV bucket vesper_rules (rules
 * added through the API, see rule-store.ts), loads the probe groups they need into their guests
 * (the loader's insmod over the bus, retried until the guest is there), consumes the events stream
 * with a durable consumer, and runs a rule's actions when one of its conditions matches.
 *
 * It answers ListRules / AddRule / RemoveRule on vesper.svc.rules.* for the gateway, and watches
 * the KV bucket, so a rule written there by anyone takes effect at once. Events are consumed only
 * while some rule exists: a host without rules does not read (and ack) every event.
 *
 * Published on vesper.events.<guest>.rules (same payload as every event, api.WatchEventsResponse):
 * - `rules/failure`: a rule fired; fields service, rule, trigger_* and every field of the triggering
 *   event (probe, event, pid, comm, signal, exit_code, port, ...): why the service counts as failed.
 * - `rules/action`: one per action with ok, action, target, duration_us, detail.
 * - `rules/suppressed`: a rule matched but its service is stopped by the cluster or already failed.
 *
 * With a state directory, the service writes <guest>.<service>.state = failed (see state-file.ts) for
 * the OCF agent's monitor, and does not fire while that file says "stopped" or "failed".
 */
import { readFileSync } from "node:fs";
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { call, ensureEventsStream, ProbeStore, serve } from "@vesper/host-common";
import { EventRecordReader } from "@vesper/probe-listener";
import { api, bus, checkRuleId, ErrorCode, EVENTS_STREAM, isVesperError, subjects, VesperError, type Logger } from "@vesper/protocol";
import { runAction, type ActionOutcome, type FailureNotice } from "./actions.js";
import { checkApiRule } from "./rule-policy.js";
import { RuleSet } from "./rule-set.js";
import { RuleStore, type RuleWatch } from "./rule-store.js";
import { failureReason, matchRule, parseRules, parseRuleText, probesToLoad, type Rule } from "./rules.js";
import { readServiceState, writeServiceState } from "./state-file.js";

export interface RulesServiceOptions {
  nc: NatsConnection;
  log: Logger;
  /** The rules file; undefined: only rules added through the API. */
  rulesFile?: string | undefined;
  /** Directory of state files shared with ocf:vesper:guest-service; undefined: none. */
  stateDir: string | undefined;
  /** Let rules added through the API run commands (exec actions...; see rule-policy.ts). Default false. */
  allowApiExec?: boolean;
  /** Events older than this (host receive time) are not acted on, e.g. after a restart (default 60 s). */
  staleMs?: number;
  /** Durable consumer name (default vesper-rules). */
  durable?: string;
  /** Retry period for loading probe groups into guests that are not there yet (default 2 s). */
  insmodRetryMs?: number;
  insmodTimeoutMs?: number;
}

export interface RulesServiceStats {
  events: number;
  fired: number;
  suppressed: number;
  actionsOk: number;
  actionsFailed: number;
}

interface Firing {
  atMs: number;
  reason: Record<string, string | number>;
}

const PROBE_NAME = "rules";
const QUEUE = "vesper-rules";

export class RulesService {
  readonly stats: RulesServiceStats = { events: 0, fired: 0, suppressed: 0, actionsOk: 0, actionsFailed: 0 };
  private readonly set: RuleSet;
  private js: JetStreamClient | undefined;
  private jsm: JetStreamManager | undefined;
  private store: RuleStore | undefined;
  private probeStore: ProbeStore | undefined;
  private watch: RuleWatch | undefined;
  private readonly subs: Subscription[] = [];
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  /** Consumer starts and stops, one at a time. */
  private consumerChain: Promise<void> = Promise.resolve();
  private consumerRetry: NodeJS.Timeout | undefined;
  private readonly loaded = new Set<string>();
  private insmodTimer: NodeJS.Timeout | undefined;
  private loading = false;
  private loadAgain = false;
  private readonly lastFired = new Map<string, Firing>();
  private stopped = false;
  private readonly pending = new Set<Promise<unknown>>();

  constructor(private readonly o: RulesServiceOptions) {
    this.set = new RuleSet({ allowExec: o.allowApiExec ?? false });
  }

  /** The rules in effect. */
  get current(): readonly Rule[] {
    return this.set.effective;
  }

  async start(): Promise<void> {
    const { nc, log, rulesFile } = this.o;
    if (rulesFile !== undefined) this.set.setFileRules(parseRules(readFileSync(rulesFile, "utf8"), rulesFile));
    this.js = jetstream(nc);
    this.jsm = await jetstreamManager(nc);
    await ensureEventsStream(this.jsm, log);
    this.store = await RuleStore.open(nc);
    this.probeStore = await ProbeStore.open(nc);
    for (const s of await this.store.list()) this.set.apply(s);
    log.info(
      { file: rulesFile, fileRules: this.set.fileRules.map((r) => r.id), apiRules: this.set.apiEntries.map((e) => e.id) },
      "rules loaded",
    );
    for (const e of this.set.apiEntries) if (e.inactiveReason !== "") log.warn({ rule: e.id, why: e.inactiveReason }, "stored rule not in effect");
    try {
      // At start the durable may resume: events that came while the service was down still count.
      await this.syncConsumer(true);
      this.serveBus();
      await this.watchStore(this.store);
    } catch (err) {
      await this.stop(); // nobody else stops a service that did not start
      throw err;
    }
    this.scheduleLoad(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.insmodTimer);
    clearTimeout(this.consumerRetry);
    for (const s of this.subs) s.unsubscribe();
    this.watch?.stop();
    await this.syncConsumer(false).catch(() => undefined);
    await Promise.allSettled([...this.pending]);
  }

  // ---- rule changes ---------------------------------------------------------------------------

  /** After the rule set changed: drop removed rules' state, load new rules' probes, start/stop consuming. */
  private async changed(prev: readonly Rule[]): Promise<void> {
    const now = new Map(this.set.effective.map((r) => [r.id, r]));
    for (const r of prev) {
      if (now.has(r.id)) continue;
      this.lastFired.delete(r.id);
      this.o.log.info({ rule: r.id }, "rule no longer in effect");
    }
    const before = new Map(prev.map((r) => [r.id, r]));
    for (const r of now.values()) {
      const b = before.get(r.id);
      if (b === undefined) this.o.log.info({ rule: r.id }, "rule in effect");
      else if (b.json !== r.json) this.o.log.info({ rule: r.id }, "rule replaced");
    }
    // Forget loads no rule needs any more, so a rule that needs them later checks them again.
    const needed = probesToLoad(this.set.effective);
    for (const k of this.loaded) {
      const [g = "", p = ""] = k.split("/");
      if (needed.get(g)?.has(p) !== true) this.loaded.delete(k);
    }
    this.scheduleLoad(0);
    await this.syncConsumer(false);
  }

  private async watchStore(store: RuleStore): Promise<void> {
    const w = await store.watch();
    this.watch = w;
    void (async () => {
      try {
        for await (const s of w.entries) {
          if (this.stopped) break;
          const prev = this.set.effective;
          if (!this.set.apply(s)) continue;
          this.o.log.info({ rule: s.id, revision: s.revision, deleted: s.deleted }, "rule changed in the store");
          const e = this.set.apiEntry(s.id);
          if (e !== undefined && e.inactiveReason !== "") this.o.log.warn({ rule: e.id, why: e.inactiveReason }, "stored rule not in effect");
          await this.changed(prev).catch((err: unknown) => this.o.log.error({ err }, "applying a rule change failed"));
        }
      } catch (err) {
        if (!this.stopped) this.o.log.error({ err }, "the rules store watch ended: restart the rules service to see rule changes");
      }
    })();
  }

  // ---- consuming events -------------------------------------------------------------------------

  /**
   * Consumes events while some rule is in effect, not otherwise. Resolves once the consumer is
   * there (or gone), so a rule is in force for every event published after AddRule returns.
   */
  private syncConsumer(mayResume: boolean): Promise<void> {
    const next = this.consumerChain.then(async () => {
      const want = !this.stopped && this.set.effective.length > 0;
      if (want && this.messages === undefined) {
        this.messages = await this.openConsumer(mayResume);
        this.loop = this.consumeLoop(this.messages);
      } else if (!want && this.messages !== undefined) {
        const m = this.messages;
        this.messages = undefined;
        await m.close().catch(() => undefined);
        await this.loop?.catch(() => undefined);
        if (!this.stopped) this.o.log.info("no rules in effect: not consuming events");
      }
    });
    this.consumerChain = next.catch((err: unknown) => {
      if (this.stopped) return;
      this.o.log.error({ err }, "cannot consume the events stream; retrying in 2 s");
      clearTimeout(this.consumerRetry);
      this.consumerRetry = setTimeout(() => void this.syncConsumer(false).catch(() => undefined), 2_000);
    });
    return next;
  }

  private async openConsumer(mayResume: boolean): Promise<ConsumerMessages> {
    const jsm = this.jsm!;
    const durable = this.o.durable ?? "vesper-rules";
    let exists = true;
    try {
      await jsm.consumers.info(EVENTS_STREAM, durable);
    } catch {
      exists = false;
    }
    if (exists && !mayResume) {
      // Its backlog is from a time without rules: no rule in effect now may act on it.
      await jsm.consumers.delete(EVENTS_STREAM, durable);
      exists = false;
    }
    if (!exists) {
      await jsm.consumers.add(EVENTS_STREAM, {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.New,
        filter_subject: subjects.allEvents,
        max_ack_pending: 10_000,
      });
    }
    const consumer = await this.js!.consumers.get(EVENTS_STREAM, durable);
    const messages = await consumer.consume({ max_messages: 256 });
    this.o.log.info({ durable, resumed: exists }, "consuming events");
    return messages;
  }

  private async consumeLoop(messages: ConsumerMessages): Promise<void> {
    const reader = new EventRecordReader();
    for await (const m of messages) {
      if (this.stopped) break;
      let records: api.WatchEventsResponse[];
      try {
        // One record, or the events of stored pages (bulk probes).
        records = reader.records(m.data, m.headers);
      } catch {
        records = [];
      }
      m.ack();
      for (const res of records) if (res.kind?.$case === "event") this.onEvent(res.kind.value);
    }
  }

  private onEvent(ev: api.Event): void {
    if (ev.probe === PROBE_NAME) return;
    this.stats.events++;
    const staleMs = this.o.staleMs ?? 60_000;
    if (ev.receivedUnixNs !== 0n && Date.now() - Number(ev.receivedUnixNs / 1_000_000n) > staleMs) return;
    for (const rule of this.set.effective) {
      const cond = matchRule(rule, ev);
      if (cond === undefined) continue;
      const p = this.fire(rule, ev, failureReason(ev, cond)).catch((err: unknown) =>
        this.o.log.error({ rule: rule.id, err: (err as Error).message }, "running a rule failed"),
      );
      this.pending.add(p);
      void p.finally(() => this.pending.delete(p));
    }
  }

  // ---- probe groups -----------------------------------------------------------------------------

  /** Loads the rules' probe groups after `delayMs`; one pass at a time, another after it if asked. */
  private scheduleLoad(delayMs: number): void {
    if (this.stopped) return;
    if (this.loading) {
      this.loadAgain = true;
      return;
    }
    clearTimeout(this.insmodTimer);
    this.insmodTimer = setTimeout(() => void this.loadProbes(), delayMs);
  }

  /** Loads every probe group the rules need; retries the ones whose guest is not there yet. */
  private async loadProbes(): Promise<void> {
    this.loading = true;
    let retry = false;
    try {
      const todo: Array<{ guest: string; probe: string }> = [];
      for (const [guest, probes] of probesToLoad(this.set.effective)) {
        for (const probe of probes) if (!this.loaded.has(`${guest}/${probe}`)) todo.push({ guest, probe });
      }
      const results = await Promise.all(todo.map(({ guest, probe }) => this.loadProbe(guest, probe)));
      retry = results.includes(false);
    } finally {
      this.loading = false;
    }
    if (this.loadAgain) {
      this.loadAgain = false;
      this.scheduleLoad(0);
    } else if (retry) this.scheduleLoad(this.o.insmodRetryMs ?? 2_000);
  }

  private async loadProbe(guest: string, probe: string): Promise<boolean> {
    if (this.stopped) return true;
    try {
      await call(this.o.nc, subjects.loaderInsmod, api.VirtInsmodRequest, bus.InsmodReply, { guest, probe, options: {} }, {
        timeoutMs: this.o.insmodTimeoutMs ?? 30_000,
      });
      this.loaded.add(`${guest}/${probe}`);
      this.o.log.info({ guest, probe }, "probe group loaded for the rules");
      return true;
    } catch (err) {
      if (isVesperError(err) && err.code === ErrorCode.ProbeAlreadyLoaded) {
        this.loaded.add(`${guest}/${probe}`);
        this.o.log.info({ guest, probe }, "probe group loaded for the rules (already there)");
        return true;
      }
      this.o.log.info({ guest, probe, err: (err as Error).message }, "cannot load the probe group yet; will retry");
      return false;
    }
  }

  /** Whether every probe group the rules need is loaded. */
  get probesReady(): boolean {
    for (const [guest, probes] of probesToLoad(this.set.effective)) for (const p of probes) if (!this.loaded.has(`${guest}/${p}`)) return false;
    return true;
  }

  // ---- the bus API (ListRules, AddRule, RemoveRule) ---------------------------------------------

  private serveBus(): void {
    const { nc, log } = this.o;
    const reply = <T>(o: { ok: T } | { error: bus.BusError }): { response?: T; error?: bus.BusError } =>
      "ok" in o ? { response: o.ok } : { error: o.error };
    this.subs.push(
      serve(nc, subjects.rulesList, api.ListRulesRequest, bus.RulesReply, reply, () => this.listRules(), log, { queue: QUEUE }),
      serve(nc, subjects.rulesAdd, api.AddRuleRequest, bus.AddRuleReply, reply, (r) => this.addRule(r), log, { queue: QUEUE }),
      serve(nc, subjects.rulesRemove, api.RemoveRuleRequest, bus.RemoveRuleReply, reply, (r) => this.removeRule(r), log, { queue: QUEUE }),
    );
  }

  async listRules(): Promise<api.ListRulesResponse> {
    const infos = await Promise.all([
      ...this.set.fileRules.map((r) => this.info(r, api.RuleSource.RULE_SOURCE_FILE, r.json, "")),
      ...this.set.apiEntries.map((e) => this.info(e.rule ?? e.id, api.RuleSource.RULE_SOURCE_API, e.json, e.inactiveReason)),
    ]);
    infos.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : a.source - b.source));
    return { rules: infos, rulesFile: this.o.rulesFile ?? "" };
  }

  async addRule(req: api.AddRuleRequest): Promise<api.AddRuleResponse> {
    const store = this.mustStore();
    const rule = parseRuleText(req.json, "rule");
    checkApiRule(rule, { allowExec: this.o.allowApiExec ?? false });
    if (this.set.fileRule(rule.id) !== undefined) {
      throw new VesperError(
        ErrorCode.RuleInFile,
        `rule ${rule.id} comes from the rules file ${this.o.rulesFile}: edit the rules file to change it (an API rule cannot replace it)`,
      );
    }
    const exists = this.set.apiEntry(rule.id) !== undefined;
    if (exists && !req.replace) throw new VesperError(ErrorCode.RuleAlreadyExists, `rule ${rule.id} already exists: set replace to overwrite it`);
    if (req.validateOnly) return { rule: await this.info(rule, api.RuleSource.RULE_SOURCE_API, rule.json, ""), replaced: exists };
    const revision = req.replace ? await store.put(rule.id, rule.json) : await store.create(rule.id, rule.json);
    const prev = this.set.effective;
    this.set.apply({ id: rule.id, json: rule.json, revision, deleted: false });
    await this.changed(prev).catch((err: unknown) => {
      throw new VesperError(
        ErrorCode.Unavailable,
        `rule ${rule.id} is stored, but the rules service cannot read the events stream yet (${(err as Error).message}): it keeps trying; see its log`,
        { cause: err },
      );
    });
    this.o.log.info({ rule: rule.id, revision, replaced: exists }, "rule added through the API");
    return { rule: await this.info(rule, api.RuleSource.RULE_SOURCE_API, rule.json, this.set.apiEntry(rule.id)?.inactiveReason ?? ""), replaced: exists };
  }

  async removeRule(req: api.RemoveRuleRequest): Promise<api.RemoveRuleResponse> {
    const store = this.mustStore();
    const { id } = req;
    checkRuleId(id);
    // The store decides: an entry another rules service just wrote may not have reached us yet.
    if (this.set.apiEntry(id) !== undefined || (await store.get(id)) !== undefined) {
      await store.delete(id);
      const prev = this.set.effective;
      this.set.forget(id);
      await this.changed(prev);
      this.o.log.info({ rule: id }, "rule removed through the API");
      return { id };
    }
    if (this.set.fileRule(id) !== undefined) {
      throw new VesperError(ErrorCode.RuleInFile, `rule ${id} comes from the rules file ${this.o.rulesFile}: edit the rules file (and restart vesper-host) to remove it`);
    }
    throw new VesperError(ErrorCode.UnknownRule, `there is no rule ${id}`);
  }

  private mustStore(): RuleStore {
    if (this.store === undefined || this.stopped) throw new VesperError(ErrorCode.Unavailable, "the rules service is not running");
    return this.store;
  }

  /** What ListRules says of a rule (or of a stored rule that does not parse: its id only). */
  private async info(rule: Rule | string, source: api.RuleSource, json: string, inactiveReason: string): Promise<api.RuleInfo> {
    const id = typeof rule === "string" ? rule : rule.id;
    const { service, guest } = typeof rule === "string" ? checkRuleId(rule) : rule;
    const probes = typeof rule === "string" ? [] : [...(probesToLoad([rule]).get(guest) ?? [])].sort();
    const fired = this.lastFired.get(id);
    return {
      id,
      service,
      guest,
      source,
      json,
      probes: await Promise.all(probes.map(async (probe) => ({ probe, loaded: await this.probeLoaded(guest, probe) }))),
      lastFired:
        fired === undefined
          ? undefined
          : { firedUnixMs: BigInt(fired.atMs), reason: Object.fromEntries(Object.entries(fired.reason).map(([k, v]) => [k, String(v)])) },
      inactiveReason,
    };
  }

  /** Whether the host has the probe loaded in the guest: the loader's store says so, else what we loaded. */
  private async probeLoaded(guest: string, probe: string): Promise<boolean> {
    try {
      return (await this.probeStore?.get(guest, probe)) !== undefined;
    } catch {
      return this.loaded.has(`${guest}/${probe}`);
    }
  }

  // ---- firing -----------------------------------------------------------------------------------

  private async fire(rule: Rule, ev: api.Event, reason: Record<string, string | number>): Promise<void> {
    const now = Date.now();
    const { stateDir } = this.o;
    const state = stateDir !== undefined ? readServiceState(stateDir, rule.guest, rule.service) : "none";
    const last = this.lastFired.get(rule.id)?.atMs;
    let why: string | undefined;
    if (state === "stopped") why = "the service is stopped by the cluster";
    else if (state === "failed") why = "the service is already marked failed";
    else if (state === "none" && last !== undefined && now - last < rule.cooldownMs) why = `fired ${now - last} ms ago (cooldown ${rule.cooldownMs} ms)`;
    if (why !== undefined) {
      this.stats.suppressed++;
      this.o.log.info({ rule: rule.id, reason, why }, "rule matched, actions suppressed");
      await this.publish(rule, "rules/suppressed", ev, { ...prefixed(reason), why });
      return;
    }
    this.lastFired.set(rule.id, { atMs: now, reason });
    this.stats.fired++;
    if (stateDir !== undefined) writeServiceState(stateDir, rule.guest, rule.service, "failed", { reason });
    this.o.log.warn({ rule: rule.id, reason }, "service failed");
    const notice: FailureNotice = {
      service: rule.service,
      guest: rule.guest,
      rule: rule.id,
      reason,
      event_unix_ns: String(ev.receivedUnixNs),
      fired_unix_ms: now,
    };
    // The actions first (failover is what counts), then the record of the failure.
    const outcomes = rule.actions.map((a) => runAction(a, rule, notice));
    await this.publish(rule, "rules/failure", ev, prefixed(reason));
    for (const o of await Promise.all(outcomes)) {
      if (o.ok) this.stats.actionsOk++;
      else this.stats.actionsFailed++;
      (o.ok ? this.o.log.info : this.o.log.warn).call(this.o.log, { rule: rule.id, ...o }, o.ok ? "action done" : "action failed");
      await this.publish(rule, "rules/action", ev, outcomeFields(o));
    }
  }

  private async publish(rule: Rule, name: string, trigger: api.Event, fields: Record<string, string | number | boolean>): Promise<void> {
    const js = this.js;
    if (js === undefined) return;
    const all: Record<string, string | number | boolean> = { service: rule.service, rule: rule.id, ...fields };
    const fv: Record<string, api.FieldValue> = {};
    for (const [k, v] of Object.entries(all)) {
      fv[k] =
        typeof v === "number" && Number.isInteger(v)
          ? { kind: { $case: "int", value: BigInt(v) } }
          : typeof v === "boolean"
            ? { kind: { $case: "int", value: v ? 1n : 0n } }
            : { kind: { $case: "str", value: String(v) } };
    }
    const event = api.Event.fromPartial({
      guest: rule.guest,
      probe: PROBE_NAME,
      event: name,
      ts: trigger.ts,
      receivedUnixNs: BigInt(Date.now()) * 1_000_000n,
      pid: trigger.pid,
      comm: trigger.comm,
      fields: fv,
    });
    try {
      await js.publish(subjects.events(rule.guest, PROBE_NAME), api.WatchEventsResponse.encode({ kind: { $case: "event", value: event }, streamSeq: 0n }).finish());
    } catch (err) {
      this.o.log.error({ rule: rule.id, name, err: (err as Error).message }, "cannot publish a rules event");
    }
  }
}

function prefixed(reason: Record<string, string | number>): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const [k, v] of Object.entries(reason)) out[k === "probe" || k === "event" || k === "condition" ? `trigger_${k}` : k] = v;
  return out;
}

function outcomeFields(o: ActionOutcome): Record<string, string | number | boolean> {
  return { action: o.action, ok: o.ok, target: o.target, duration_us: o.durationUs, detail: o.detail };
}
