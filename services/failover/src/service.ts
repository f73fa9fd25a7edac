/**
 * The rules service: loads watch rules from a JSON file, loads the probe groups they need into their
 * guests (the loader's insmod over the bus, retried until the guest is there), consumes the events
 * stream with a durable consumer, and runs a rule's actions when one of its conditions matches.
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
import type { NatsConnection } from "@nats-io/transport-node";
import { call, ensureEventsStream } from "@vesper/host-common";
import { api, bus, ErrorCode, EVENTS_STREAM, isVesperError, subjects, type Logger } from "@vesper/protocol";
import { runAction, type ActionOutcome, type FailureNotice } from "./actions.js";
import { failureReason, matchRule, parseRules, probesToLoad, type Rule } from "./rules.js";
import { readServiceState, writeServiceState } from "./state-file.js";

export interface RulesServiceOptions {
  nc: NatsConnection;
  log: Logger;
  rulesFile: string;
  /** Directory of state files shared with ocf:vesper:guest-service; undefined: none. */
  stateDir: string | undefined;
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

const PROBE_NAME = "rules";

export class RulesService {
  readonly stats: RulesServiceStats = { events: 0, fired: 0, suppressed: 0, actionsOk: 0, actionsFailed: 0 };
  private rules: Rule[] = [];
  private js: JetStreamClient | undefined;
  private jsm: JetStreamManager | undefined;
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private readonly loaded = new Set<string>();
  private insmodTimer: NodeJS.Timeout | undefined;
  private readonly lastFired = new Map<string, number>();
  private stopped = false;
  private readonly pending = new Set<Promise<unknown>>();

  constructor(private readonly o: RulesServiceOptions) {}

  get current(): readonly Rule[] {
    return this.rules;
  }

  async start(): Promise<void> {
    this.rules = parseRules(readFileSync(this.o.rulesFile, "utf8"), this.o.rulesFile);
    this.o.log.info({ file: this.o.rulesFile, rules: this.rules.map((r) => r.id) }, "rules loaded");
    this.js = jetstream(this.o.nc);
    this.jsm = await jetstreamManager(this.o.nc);
    await ensureEventsStream(this.jsm, this.o.log);
    const durable = this.o.durable ?? "vesper-rules";
    const cfg = {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      filter_subject: subjects.allEvents,
      max_ack_pending: 10_000,
    };
    try {
      await this.jsm.consumers.info(EVENTS_STREAM, durable);
    } catch {
      await this.jsm.consumers.add(EVENTS_STREAM, cfg);
    }
    const consumer = await this.js.consumers.get(EVENTS_STREAM, durable);
    this.messages = await consumer.consume({ max_messages: 256 });
    this.loop = this.consumeLoop(this.messages);
    void this.loadProbes();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.insmodTimer);
    await this.messages?.close().catch(() => undefined);
    await this.loop?.catch(() => undefined);
    await Promise.allSettled([...this.pending]);
  }

  /** Loads every probe group the rules need; retries the ones whose guest is not there yet. */
  private async loadProbes(): Promise<void> {
    const todo: Array<{ guest: string; probe: string }> = [];
    for (const [guest, probes] of probesToLoad(this.rules)) {
      for (const probe of probes) if (!this.loaded.has(`${guest}/${probe}`)) todo.push({ guest, probe });
    }
    const results = await Promise.all(
      todo.map(async ({ guest, probe }) => {
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
      }),
    );
    if (results.includes(false) && !this.stopped) this.insmodTimer = setTimeout(() => void this.loadProbes(), this.o.insmodRetryMs ?? 2_000);
  }

  /** Whether every probe group the rules need is loaded. */
  get probesReady(): boolean {
    for (const [guest, probes] of probesToLoad(this.rules)) for (const p of probes) if (!this.loaded.has(`${guest}/${p}`)) return false;
    return true;
  }

  private async consumeLoop(messages: ConsumerMessages): Promise<void> {
    for await (const m of messages) {
      if (this.stopped) break;
      let res: api.WatchEventsResponse | undefined;
      try {
        res = api.WatchEventsResponse.decode(m.data);
      } catch {
        res = undefined;
      }
      m.ack();
      if (res?.kind?.$case !== "event") continue;
      const ev = res.kind.value;
      if (ev.probe === PROBE_NAME) continue;
      this.stats.events++;
      const staleMs = this.o.staleMs ?? 60_000;
      if (ev.receivedUnixNs !== 0n && Date.now() - Number(ev.receivedUnixNs / 1_000_000n) > staleMs) continue;
      for (const rule of this.rules) {
        const cond = matchRule(rule, ev);
        if (cond === undefined) continue;
        const p = this.fire(rule, ev, failureReason(ev, cond)).catch((err: unknown) =>
          this.o.log.error({ rule: rule.id, err: (err as Error).message }, "running a rule failed"),
        );
        this.pending.add(p);
        void p.finally(() => this.pending.delete(p));
      }
    }
  }

  private async fire(rule: Rule, ev: api.Event, reason: Record<string, string | number>): Promise<void> {
    const now = Date.now();
    const { stateDir } = this.o;
    const state = stateDir !== undefined ? readServiceState(stateDir, rule.guest, rule.service) : "none";
    const last = this.lastFired.get(rule.id);
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
    this.lastFired.set(rule.id, now);
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
