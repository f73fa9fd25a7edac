/**
 * probe-loader: the host end of the ring's control path, and virt_insmod /
 * virt_rmmod. It answers guests' Hello and idle requests, sends commands only as
 * answers, records what is loaded where (ProbeStore) and tells the listener when
 * to start and stop decoding a probe (unload is two-phase, as in the seed).
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import {
  api,
  applyProbeOptions,
  bus,
  checkGuestId,
  decodeGuestMessage,
  encodeHostMessage,
  ErrorCode,
  FrameError,
  guestOfRingSubject,
  PROTOCOL_VERSION,
  ring,
  specEventNames,
  subjects,
  VesperError,
  type Logger,
} from "@vesper/protocol";
import { ensureEventsStream, fromBusError, request, serve, type ProbeStore } from "@vesper/host-common";
import { AgentWatch } from "./agent-watch.js";
import { GuestSession } from "./guest-session.js";
import { missingRequirements, type ProbeLibrary } from "./probe-library.js";

export interface ProbeLoaderOptions {
  nc: NatsConnection;
  library: ProbeLibrary;
  store: ProbeStore;
  log: Logger;
  idleHoldMs?: number;
  offlineAfterMs?: number;
  commandTimeoutMs?: number;
  /** A frontend silent this long is reported lost (vesper.events.<guest>.agent, agent/lost). Default 3 idle holds + 2 s. */
  agentLostMs?: number;
}

/** The probe name of the loader's agent liveness events. */
export const AGENT_PROBE = "agent";

const RESULT_ERRORS: Partial<Record<ring.ResultCode, ErrorCode>> = {
  [ring.ResultCode.RESULT_CODE_INVALID_SPEC]: ErrorCode.InvalidSpec,
  [ring.ResultCode.RESULT_CODE_ALREADY_LOADED]: ErrorCode.ProbeAlreadyLoaded,
  [ring.ResultCode.RESULT_CODE_NOT_LOADED]: ErrorCode.ProbeNotLoaded,
  [ring.ResultCode.RESULT_CODE_KERNEL_REFUSED]: ErrorCode.KernelRefused,
  [ring.ResultCode.RESULT_CODE_UNSUPPORTED]: ErrorCode.Unsupported,
  [ring.ResultCode.RESULT_CODE_UNAVAILABLE]: ErrorCode.Unavailable,
};

export class ProbeLoader {
  readonly counters = { malformed: 0, wrongGuest: 0, unsolicited: 0, unknownResults: 0 };
  private readonly sessions = new Map<string, GuestSession>();
  /** What each guest sent that we refused (ListGuests shows it, with the listener's counts). */
  private readonly drops = new Map<string, api.GuestDrops>();
  private readonly subs: Subscription[] = [];
  /** Mutations per guest run one at a time, so insmod/rmmod/reconcile never interleave. */
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly idleHoldMs: number;
  private readonly offlineAfterMs: number;
  private readonly commandTimeoutMs: number;
  private readonly agents: AgentWatch;
  private agentTimer: NodeJS.Timeout | undefined;
  private eventsStream: Promise<unknown> | undefined;

  constructor(private readonly o: ProbeLoaderOptions) {
    this.idleHoldMs = o.idleHoldMs ?? 2_000;
    this.offlineAfterMs = o.offlineAfterMs ?? this.idleHoldMs * 3 + 3_000;
    this.commandTimeoutMs = o.commandTimeoutMs ?? 30_000;
    this.agents = new AgentWatch(o.agentLostMs ?? this.idleHoldMs * 3 + 2_000);
  }

  start(): void {
    const { nc, log } = this.o;
    const ctl = nc.subscribe(subjects.allRingUpCtl, { queue: "vesper-loader" });
    this.subs.push(ctl);
    void (async () => {
      for await (const m of ctl) this.onRingMessage(m.subject, m.data);
    })();
    const reply = <T>(k: "response") => (o: { ok: T } | { error: bus.BusError }) =>
      "ok" in o ? { [k]: o.ok } : { error: o.error };
    this.subs.push(
      serve(nc, subjects.loaderInsmod, api.VirtInsmodRequest, bus.InsmodReply, reply("response"), (r) => this.insmod(r), log, { queue: "vesper-loader" }),
      serve(nc, subjects.loaderRmmod, api.VirtRmmodRequest, bus.RmmodReply, reply("response"), (r) => this.rmmod(r), log, { queue: "vesper-loader" }),
      serve(nc, subjects.loaderGuests, api.ListGuestsRequest, bus.GuestsReply, reply("response"), (r) => this.listGuests(r), log, { queue: "vesper-loader" }),
      serve(nc, subjects.loaderProbes, api.ListProbesRequest, bus.ProbesReply, reply("response"), async () => this.listProbes(), log, { queue: "vesper-loader" }),
    );
    const channels = nc.subscribe(subjects.allChannels);
    this.subs.push(channels);
    void (async () => {
      for await (const m of channels) {
        try {
          const ev = bus.ChannelEvent.decode(m.data);
          const s = this.sessions.get(ev.guest);
          if (s !== undefined) s.transport = ev.transport;
        } catch {
          /* not ours to judge */
        }
      }
    })();
    this.agentTimer = setInterval(() => this.checkAgents(), Math.max(50, Math.min(1_000, Math.floor(this.agents.lostAfterMs / 4))));
    this.agentTimer.unref();
    log.info({ idleHoldMs: this.idleHoldMs, agentLostMs: this.agents.lostAfterMs }, "probe-loader started");
  }

  async stop(): Promise<void> {
    clearInterval(this.agentTimer);
    for (const s of this.subs) s.unsubscribe();
    for (const s of this.sessions.values()) s.close("probe-loader stopping");
  }

  // ---- the ring -------------------------------------------------------------

  private reply(guest: string, replyTo: bigint, body: ring.HostMessage["body"]): void {
    const msg: ring.HostMessage = { version: PROTOCOL_VERSION, guestId: guest, replyTo, body };
    this.o.nc.publish(subjects.ringDown(guest), encodeHostMessage(msg));
  }

  private ringError(guest: string, replyTo: bigint, code: ring.RingErrorCode, message: string): void {
    this.reply(guest, replyTo, { $case: "error", value: { code, message } });
  }

  private session(guest: string): GuestSession {
    let s = this.sessions.get(guest);
    if (s === undefined) {
      s = new GuestSession(guest, {
        idleHoldMs: this.idleHoldMs,
        offlineAfterMs: this.offlineAfterMs,
        log: this.o.log,
        send: (replyTo, command) => this.reply(guest, replyTo, { $case: "command", value: command }),
      });
      this.sessions.set(guest, s);
    }
    return s;
  }

  private onRingMessage(subject: string, data: Uint8Array): void {
    const { log } = this.o;
    const guest = guestOfRingSubject(subject);
    if (guest === undefined) return;
    const drops = this.guestDrops(guest);
    drops.ctlMessages++;
    let msg: ring.GuestMessage;
    try {
      msg = decodeGuestMessage(data);
    } catch (err) {
      this.counters.malformed++;
      const message = err instanceof FrameError ? err.message : String(err);
      log.warn({ guest, err: message }, "malformed ring message");
      const mismatch = message.includes("protocol version");
      if (mismatch) drops.versionMismatch++;
      else drops.ctlMalformed++;
      const code = mismatch
        ? ring.RingErrorCode.RING_ERROR_CODE_VERSION_MISMATCH
        : ring.RingErrorCode.RING_ERROR_CODE_MALFORMED;
      this.ringError(guest, 0n, code, message);
      return;
    }
    if (msg.guestId !== guest) {
      this.counters.wrongGuest++;
      drops.wrongGuest++;
      log.warn({ guest, claimed: msg.guestId }, "ring message claims another guest id; dropped");
      this.ringError(guest, msg.seq, ring.RingErrorCode.RING_ERROR_CODE_WRONG_GUEST, `this channel belongs to guest ${guest}, not ${msg.guestId}`);
      return;
    }
    const body = msg.body;
    this.agentSeen(guest, body?.$case === "hello" ? body.value.bootId : undefined);
    switch (body?.$case) {
      case "hello":
        this.onHello(guest, msg.seq, body.value);
        return;
      case "goodbye":
        this.onGoodbye(guest, msg.seq, body.value);
        return;
      case "idle": {
        const s = this.sessions.get(guest);
        if (s?.greeted !== true) {
          this.counters.unsolicited++;
          drops.unsolicited++;
          this.ringError(guest, msg.seq, ring.RingErrorCode.RING_ERROR_CODE_UNSOLICITED, "idle request before Hello: say Hello first");
          return;
        }
        s.onIdle(msg.seq);
        return;
      }
      case "result": {
        const s = this.sessions.get(guest);
        if (s === undefined || !s.onResult(body.value)) {
          this.counters.unknownResults++;
          drops.unknownResults++;
          log.warn({ guest, commandId: String(body.value.commandId) }, "result for no outstanding command; dropped");
        }
        return;
      }
      default:
        // Data and stats travel on the data subject; on this one they are out of place.
        this.counters.unsolicited++;
        drops.unsolicited++;
        this.ringError(guest, msg.seq, ring.RingErrorCode.RING_ERROR_CODE_UNSOLICITED, `unexpected ${body?.$case ?? "empty"} message on the control channel`);
    }
  }

  private onHello(guest: string, seq: bigint, hello: ring.Hello): void {
    const s = this.session(guest);
    const rebooted = s.hello !== undefined && s.hello.bootId !== hello.bootId;
    s.reset(hello);
    this.o.log.info(
      { guest, kernel: hello.kernelRelease, loaded: hello.loadedProbes, kprobes: hello.capabilities?.kprobes, rebooted },
      "guest said hello",
    );
    this.reply(guest, seq, { $case: "welcome", value: { idleHoldMs: this.idleHoldMs, maxFrameBytes: 0 } });
    void this.serial(guest, () => this.reconcile(guest, hello)).catch((err: unknown) =>
      this.o.log.error({ guest, err: (err as Error).message }, "reconciling probes failed"),
    );
  }

  /** The frontend stops on purpose: no heartbeat is due, so its silence is no agent/lost. */
  private onGoodbye(guest: string, seq: bigint, goodbye: ring.Goodbye): void {
    const s = this.sessions.get(guest);
    if (s?.greeted !== true) {
      this.counters.unsolicited++;
      this.guestDrops(guest).unsolicited++;
      this.ringError(guest, seq, ring.RingErrorCode.RING_ERROR_CODE_UNSOLICITED, "goodbye before Hello: nothing to leave");
      return;
    }
    const left = s.leave(goodbye);
    this.agents.forget(guest);
    this.o.log.info({ guest, reason: goodbye.reason, probesKept: goodbye.probesKept }, "guest frontend said goodbye");
    this.publishAgent(guest, "left", `agent:${guest}:left:${left.atMs}`, { reason: goodbye.reason, probes_kept: goodbye.probesKept ? 1 : 0 });
  }

  /** Makes the guest's loaded probes match the store: reload what it lost, unload what nobody wants. */
  private async reconcile(guest: string, hello: ring.Hello): Promise<void> {
    const wanted = await this.o.store.list(guest);
    const has = new Set(hello.loadedProbes);
    for (const entry of wanted) {
      const spec = entry.spec;
      if (spec === undefined || has.has(spec.name)) continue;
      this.o.log.info({ guest, probe: spec.name }, "guest lost a probe it should have; loading it again");
      await this.loadAndAttach(guest, spec).catch((err: unknown) =>
        this.o.log.error({ guest, probe: spec.name, err: (err as Error).message }, "reload failed"),
      );
    }
    const wantedNames = new Set(wanted.map((w) => w.spec?.name));
    for (const name of has) {
      if (wantedNames.has(name)) continue;
      this.o.log.info({ guest, probe: name }, "guest has a probe nobody asked for; unloading it");
      await this.session(guest).run({ $case: "unload", value: { probe: name } }, this.commandTimeoutMs).catch(() => undefined);
    }
  }

  private serial<T>(guest: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(guest) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.chains.set(guest, next.catch(() => undefined));
    return next;
  }

  // ---- agent loss ------------------------------------------------------------

  private agentSeen(guest: string, bootId: string | undefined): void {
    const back = this.agents.seen(guest, Date.now(), bootId);
    if (back === undefined) return;
    this.o.log.warn({ guest, silentMs: back.silentMs, rebooted: back.rebooted }, "guest frontend is back");
    this.publishAgent(guest, "back", `agent:${guest}:back:${back.lostAtMs}`, {
      silent_ms: back.silentMs,
      rebooted: back.rebooted ? 1 : 0,
      boot_id: back.bootId,
    });
  }

  private checkAgents(): void {
    for (const l of this.agents.check(Date.now())) {
      this.o.log.warn({ guest: l.guest, silentMs: l.silentMs }, "guest frontend lost: no heartbeat");
      // The msgID names the loss episode: a second loader seeing the same silence does not publish twice.
      this.publishAgent(l.guest, "lost", `agent:${l.guest}:lost:${l.lastSeenMs}`, {
        silent_ms: l.silentMs,
        last_seen_unix_ms: l.lastSeenMs,
        boot_id: l.bootId,
      });
    }
  }

  private publishAgent(guest: string, what: "lost" | "back" | "left", msgID: string, fields: Record<string, number | string>): void {
    const { nc, log } = this.o;
    const nowNs = BigInt(Date.now()) * 1_000_000n;
    const f: Record<string, api.FieldValue> = {};
    for (const [k, v] of Object.entries(fields)) {
      f[k] = typeof v === "number" ? { kind: { $case: "int", value: BigInt(v) } } : { kind: { $case: "str", value: v } };
    }
    const res: api.WatchEventsResponse = {
      kind: {
        $case: "event",
        value: {
          guest,
          probe: AGENT_PROBE,
          event: `agent/${what}`,
          cpu: 0,
          ts: nowNs,
          receivedUnixNs: nowNs,
          pid: 0,
          comm: "",
          fields: f,
          pageSeq: 0n,
          index: 0,
          lostBefore: 0n,
        },
      },
      streamSeq: 0n,
    };
    this.eventsStream ??= jetstreamManager(nc).then((jsm) => ensureEventsStream(jsm, log));
    void this.eventsStream
      .then(() => jetstream(nc).publish(subjects.events(guest, AGENT_PROBE), api.WatchEventsResponse.encode(res).finish(), { msgID }))
      .catch((err: unknown) => {
        this.eventsStream = undefined;
        log.error({ guest, event: `agent/${what}`, err: (err as Error).message }, "publishing an agent event failed");
      });
  }

  // ---- virt_insmod / virt_rmmod ------------------------------------------------

  private onlineSession(guest: string): GuestSession {
    checkGuestId(guest);
    const s = this.sessions.get(guest);
    if (s === undefined) {
      throw new VesperError(ErrorCode.UnknownGuest, `guest ${guest} is not known: it has never connected (see \`vesper guests\`)`);
    }
    if (s.left !== undefined) {
      throw new VesperError(
        ErrorCode.GuestOffline,
        `guest ${guest} is offline: its frontend stopped ${Math.round((Date.now() - s.left.atMs) / 1000)} s ago (${s.left.reason || "no reason given"}); it reconnects when it starts again`,
      );
    }
    if (!s.online) {
      throw new VesperError(
        ErrorCode.GuestOffline,
        `guest ${guest} is offline: its frontend last answered ${Math.round((Date.now() - s.lastSeen) / 1000)} s ago`,
      );
    }
    return s;
  }

  private resultError(guest: string, probe: string, r: ring.Result): VesperError | undefined {
    if (r.code === ring.ResultCode.RESULT_CODE_OK) return undefined;
    const code = RESULT_ERRORS[r.code] ?? ErrorCode.Internal;
    return new VesperError(code, `guest ${guest}, probe ${probe}: ${r.message}`, { details: r.kernelLog });
  }

  private async loadAndAttach(guest: string, spec: ring.ProbeSpec): Promise<ring.LoadedProbe> {
    const s = this.onlineSession(guest);
    const result = await s.run({ $case: "load", value: { spec } }, this.commandTimeoutMs);
    const err = this.resultError(guest, spec.name, result);
    if (err !== undefined) throw err;
    if (result.detail?.$case !== "loaded") {
      throw new VesperError(ErrorCode.Internal, `guest ${guest} loaded ${spec.name} but sent no formats`);
    }
    const loaded = result.detail.value;
    const entry: bus.AttachRequest = { guest, spec, loaded };
    try {
      const r = await request(this.o.nc, subjects.listenerAttach, bus.AttachRequest, bus.AttachResponse, entry, { timeoutMs: 10_000 });
      if (r.error !== undefined) throw fromBusError(r.error);
      await this.o.store.put(entry);
    } catch (e) {
      if (e instanceof VesperError && e.code === ErrorCode.Malformed) {
        this.guestDrops(guest).badFormats++;
        this.o.log.warn({ guest, probe: spec.name, err: e.message }, "the guest's load result does not parse: refusing the probe");
      }
      // Never leave a probe firing in a guest that nobody listens to.
      await s.run({ $case: "unload", value: { probe: spec.name } }, this.commandTimeoutMs).catch(() => undefined);
      throw e;
    }
    // What ListGuests shows, whether insmod or a reconcile after a Hello loaded it.
    const has = s.hello?.loadedProbes;
    if (has !== undefined && !has.includes(spec.name)) has.push(spec.name);
    return loaded;
  }

  async insmod(req: api.VirtInsmodRequest): Promise<api.VirtInsmodResponse> {
    const guest = req.guest;
    const entry = this.o.library.get(req.probe);
    const spec = applyProbeOptions(entry.spec, req.options);
    return this.serial(guest, async () => {
      const s = this.onlineSession(guest);
      const missing = missingRequirements(spec, s.hello?.capabilities);
      if (missing.length > 0) {
        throw new VesperError(
          ErrorCode.Unsupported,
          `guest ${guest} (kernel ${s.hello?.kernelRelease ?? "?"}) cannot load probe ${spec.name}: its kernel lacks ${missing.join("; ")}`,
        );
      }
      if ((await this.o.store.get(guest, spec.name)) !== undefined || s.hello?.loadedProbes.includes(spec.name)) {
        throw new VesperError(ErrorCode.ProbeAlreadyLoaded, `probe ${spec.name} is already loaded in guest ${guest}; rmmod it first`);
      }
      const loaded = await this.loadAndAttach(guest, spec);
      this.o.log.info({ guest, probe: spec.name, instance: loaded.instance }, "probe loaded");
      return { guest, probe: spec.name, instance: loaded.instance, events: specEventNames(spec) };
    });
  }

  async rmmod(req: api.VirtRmmodRequest): Promise<api.VirtRmmodResponse> {
    const guest = checkGuestId(req.guest);
    const probe = req.probe;
    const force = (req.flags & api.RmmodFlag.RMMOD_FLAG_FORCE) !== 0;
    return this.serial(guest, async () => {
      const stored = await this.o.store.get(guest, probe);
      const s = this.sessions.get(guest);
      const inGuest = s?.hello?.loadedProbes.includes(probe) ?? false;
      if (stored === undefined && !inGuest) {
        throw new VesperError(ErrorCode.ProbeNotLoaded, `probe ${probe} is not loaded in guest ${guest} (see \`vesper guests\`)`);
      }
      // Phase 1: the host stops listening.
      const d = await request(this.o.nc, subjects.listenerDetach, bus.DetachRequest, bus.DetachResponse, { guest, probe }, { timeoutMs: 10_000 });
      if (d.error !== undefined) throw fromBusError(d.error);
      // Phase 2: the guest unloads.
      let guestClean = false;
      try {
        const session = this.onlineSession(guest);
        const r = await session.run({ $case: "unload", value: { probe } }, this.commandTimeoutMs);
        const err = this.resultError(guest, probe, r);
        if (err !== undefined && err.code !== ErrorCode.ProbeNotLoaded) throw err;
        guestClean = true;
        if (session.hello !== undefined) session.hello.loadedProbes = session.hello.loadedProbes.filter((p) => p !== probe);
      } catch (err) {
        if (!force) throw err;
        this.o.log.warn({ guest, probe, err: (err as Error).message }, "forced rmmod: guest did not unload");
      }
      await this.o.store.delete(guest, probe);
      this.o.log.info({ guest, probe, guestClean }, "probe unloaded");
      return { guest, probe, guestClean };
    });
  }

  private guestDrops(guest: string): api.GuestDrops {
    let d = this.drops.get(guest);
    if (d === undefined) this.drops.set(guest, (d = api.GuestDrops.fromPartial({})));
    return d;
  }

  /** The listener's data-path counters; empty when it does not answer in time. */
  private async listenerDrops(): Promise<Record<string, api.GuestDrops>> {
    try {
      const r = await request(this.o.nc, subjects.listenerStats, bus.ListenerStatsRequest, bus.ListenerStatsReply, { guest: "" }, { timeoutMs: 1_000 });
      return r.guests;
    } catch {
      return {};
    }
  }

  async listGuests(req: Partial<api.ListGuestsRequest> = {}): Promise<api.ListGuestsResponse> {
    const data = await this.listenerDrops();
    const guests: api.Guest[] = [];
    for (const s of this.sessions.values()) {
      if (req.guest && req.guest !== s.id) continue;
      const caps = s.hello?.capabilities;
      guests.push({
        id: s.id,
        state: s.left !== undefined ? api.GuestState.GUEST_STATE_STOPPED : s.online ? api.GuestState.GUEST_STATE_ONLINE : api.GuestState.GUEST_STATE_OFFLINE,
        stoppedReason: s.left?.reason ?? "",
        kernelRelease: s.hello?.kernelRelease ?? "",
        bootId: s.hello?.bootId ?? "",
        capabilities: caps === undefined || req.withTracepoints === true ? caps : { ...caps, tracepoints: [] },
        tracepointCount: caps?.tracepoints.length ?? 0,
        loadedProbes: [...(s.hello?.loadedProbes ?? [])],
        lastSeenUnixMs: BigInt(s.lastSeen),
        transport: s.transport,
        clockOffsetNs: s.clockOffsetNs ?? 0n,
        pingRttUs: s.lastRttMs === undefined ? 0 : Math.round(s.lastRttMs * 1000),
        drops: { ...(data[s.id] ?? api.GuestDrops.fromPartial({})), ...ctlDrops(this.drops.get(s.id)) },
      });
    }
    guests.sort((a, b) => a.id.localeCompare(b.id));
    return { guests };
  }

  listProbes(): api.ListProbesResponse {
    return {
      probes: this.o.library
        .list()
        .map((e) => ({ name: e.spec.name, description: e.spec.description, spec: e.spec, source: e.source, events: [...e.events] })),
    };
  }
}

/** The loader's own (control-path) fields of a guest's drop counters. */
function ctlDrops(d: api.GuestDrops | undefined): Partial<api.GuestDrops> {
  if (d === undefined) return {};
  const { ctlMessages, ctlMalformed, versionMismatch, wrongGuest, unsolicited, unknownResults, badFormats } = d;
  return { ctlMessages, ctlMalformed, versionMismatch, wrongGuest, unsolicited, unknownResults, badFormats };
}
