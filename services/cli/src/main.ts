/**
 * The `vesper` command. `main(argv)` takes the arguments after the program name and
 * resolves to the exit code (0 ok, 1 error, 2 usage, 130 interrupted); it never
 * calls process.exit, so tests run it in-process.
 */
import { Command, CommanderError, Option } from "commander";
import { api, toVesperError } from "@vesper/protocol";
import { Metadata } from "@grpc/grpc-js";
import { DEFAULT_ADDR, VesperApiClient } from "./client.js";
import {
  eventToJson,
  formatError,
  formatEventLine,
  formatGuests,
  formatProbeDescription,
  formatProbes,
  formatRules,
  probeDescriptionToJson,
  guestToJson,
  probeToJson,
  ruleToJson,
  type ErrorContext,
} from "./format.js";
import { InputError, readRuleInput, ruleItems, type TextSource } from "./rule-input.js";

export interface OutputStream {
  write(chunk: string): boolean;
  once?(event: "drain", listener: () => void): unknown;
}

export interface CliIo {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Record<string, string | undefined>;
  /** What `rules add -` reads (default: process.stdin). */
  stdin?: TextSource;
  /** Aborting ends `watch` cleanly (exit 0) and interrupts other commands (exit 130). */
  signal?: AbortSignal;
}

/** Default deadlines: insmod/rmmod wait for the guest (the gateway gives the loader 30 s). */
const MUTATION_TIMEOUT_MS = 40_000;
const QUERY_TIMEOUT_MS = 10_000;

class UsageError extends Error {
  override readonly name = "UsageError";
}

interface GlobalOpts {
  addr: string;
  timeout?: string;
  token?: string;
}

export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s.trim());
  if (!m) throw new UsageError(`invalid duration ${JSON.stringify(s)}: use e.g. 500ms, 10s or 2m`);
  const n = Number(m[1]);
  const ms = m[2] === "ms" ? n : m[2] === "m" ? n * 60_000 : n * 1000;
  if (ms <= 0) throw new UsageError(`invalid duration ${JSON.stringify(s)}: it must be positive`);
  return Math.round(ms);
}

function parseCount(name: string, s: string | undefined, min: number): number | undefined {
  if (s === undefined) return undefined;
  if (!/^\d+$/.test(s) || Number(s) < min || !Number.isSafeInteger(Number(s))) {
    throw new UsageError(`invalid ${name} ${JSON.stringify(s)}: use an integer >= ${min}`);
  }
  return Number(s);
}

export function parseOptions(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of pairs) {
    const i = kv.indexOf("=");
    if (i <= 0) throw new UsageError(`invalid option ${JSON.stringify(kv)}: use key=value (e.g. buffer_kb=512)`);
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

async function writeLine(out: OutputStream, line: string): Promise<void> {
  if (!out.write(line + "\n") && out.once) {
    await new Promise<void>((resolve) => out.once?.("drain", resolve));
  }
}

export async function main(argv: readonly string[], ioIn: Partial<CliIo> = {}): Promise<number> {
  const io: CliIo = {
    stdout: ioIn.stdout ?? process.stdout,
    stderr: ioIn.stderr ?? process.stderr,
    env: ioIn.env ?? process.env,
    stdin: ioIn.stdin ?? process.stdin,
    ...(ioIn.signal ? { signal: ioIn.signal } : {}),
  };
  const ctx: ErrorContext = { addr: io.env.VESPER_ADDR || DEFAULT_ADDR };
  let client: VesperApiClient | undefined;
  const signal = io.signal;

  const program = new Command("vesper")
    .description("Load probes into guest kernels and watch their events (Vesper)")
    .addOption(
      new Option("--addr <host:port>", "address of the Vesper gateway (env VESPER_ADDR)").default(ctx.addr),
    )
    .option("--token <token>", "bearer token for a gateway that needs one (env VESPER_TOKEN)")
    .option("--timeout <duration>", "deadline of each call, e.g. 500ms, 10s, 2m (default 40s for insmod/rmmod, 10s otherwise)")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => void io.stdout.write(s),
      writeErr: (s) => void io.stderr.write(s),
    })
    .showHelpAfterError("(run `vesper --help` for usage)");

  const connect = (cmd: Command, defaultTimeoutMs: number): { c: VesperApiClient; timeoutMs: number } => {
    const g = cmd.optsWithGlobals<GlobalOpts>();
    ctx.addr = g.addr;
    const timeoutMs = g.timeout === undefined ? defaultTimeoutMs : parseDuration(g.timeout);
    ctx.timeoutMs = timeoutMs;
    const token = g.token ?? (io.env.VESPER_TOKEN || undefined);
    const metadata = new Metadata();
    if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
    ctx.hasToken = token !== undefined;
    client = new VesperApiClient(g.addr, { timeoutMs, metadata });
    return { c: client, timeoutMs };
  };
  const callOpts = signal ? { signal } : {};

  program
    .command("guests")
    .description("list the guests the host knows: id, state, kernel, loaded probes, last seen")
    .option("--json", "one JSON array")
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { c } = connect(cmd, QUERY_TIMEOUT_MS);
      const guests = await c.listGuests(callOpts);
      await writeLine(io.stdout, opts.json ? JSON.stringify(guests.map(guestToJson)) : formatGuests(guests));
    });

  program
    .command("probes")
    .description("list the probes in the host's library: name, description, events")
    .option("--json", "one JSON array")
    .option("--describe <name>", "what one probe needs (tracepoints, kprobes) and what each of its events and fields means")
    .action(async (opts: { json?: boolean; describe?: string }, cmd: Command) => {
      const { c } = connect(cmd, QUERY_TIMEOUT_MS);
      const probes = await c.listProbes(callOpts);
      if (opts.describe !== undefined) {
        const name = opts.describe;
        ctx.probe = name;
        const p = probes.find((x) => x.name === name);
        if (p === undefined) {
          throw new UsageError(`no probe named ${JSON.stringify(name)} in the library (known: ${probes.map((x) => x.name).join(", ")})`);
        }
        await writeLine(io.stdout, opts.json ? JSON.stringify(probeDescriptionToJson(p)) : formatProbeDescription(p));
        return;
      }
      await writeLine(io.stdout, opts.json ? JSON.stringify(probes.map(probeToJson)) : formatProbes(probes));
    });

  program
    .command("insmod")
    .description("load a probe into a running guest")
    .argument("<guest>", "guest id (see `vesper guests`)")
    .argument("<probe>", "probe name (see `vesper probes`)")
    .argument("[options...]", "key=value overrides: delivery, buffer_kb, flush_ms, filter.<event>")
    .action(async (guest: string, probe: string, kv: string[], _opts: unknown, cmd: Command) => {
      ctx.guest = guest;
      ctx.probe = probe;
      const options = parseOptions(kv);
      const { c } = connect(cmd, MUTATION_TIMEOUT_MS);
      const res = await c.insmod({ guest, probe, options }, callOpts);
      const events = res.events.length > 0 ? `: events ${res.events.join(", ")}` : "";
      await writeLine(io.stdout, `loaded probe ${res.probe} into guest ${res.guest} (instance ${res.instance})${events}`);
    });

  program
    .command("rmmod")
    .description("unload a probe from a guest (the host stops listening first, then the guest unloads)")
    .argument("<guest>", "guest id")
    .argument("<probe>", "probe name")
    .option("--force", "forget the probe on the host even if the guest is offline or fails to unload")
    .action(async (guest: string, probe: string, opts: { force?: boolean }, cmd: Command) => {
      ctx.guest = guest;
      ctx.probe = probe;
      const { c } = connect(cmd, MUTATION_TIMEOUT_MS);
      const flags = opts.force ? api.RmmodFlag.RMMOD_FLAG_FORCE : api.RmmodFlag.RMMOD_FLAG_UNSPECIFIED;
      const res = await c.rmmod({ guest, probe, flags }, callOpts);
      const note = res.guestClean ? "" : " (the guest did not confirm that nothing is left: it may be offline)";
      await writeLine(io.stdout, `unloaded probe ${res.probe} from guest ${res.guest}${note}`);
    });

  const rules = program
    .command("rules")
    .description("list the watch rules (rules file and API): conditions, actions, source, probes loaded, last fired")
    .option("--json", "one JSON array")
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { c } = connect(cmd, QUERY_TIMEOUT_MS);
      const res = await c.listRules(callOpts);
      await writeLine(io.stdout, opts.json ? JSON.stringify(res.rules.map(ruleToJson)) : formatRules(res.rules));
    });

  rules
    .command("add")
    .description('add watch rules through the API (the host keeps them across restarts): one rule object, or {"rules": [...]}')
    .argument("<file>", "JSON file, or - for standard input")
    .option("--replace", "overwrite rules with the same id that were added through the API")
    .action(async (file: string, opts: { replace?: boolean }, cmd: Command) => {
      const items = ruleItems(await readRuleInput(file, io.stdin ?? []), file);
      const { c } = connect(cmd, QUERY_TIMEOUT_MS);
      const replace = opts.replace === true;
      // Every rule is checked before any is added, so a bad rule in a document adds nothing.
      const ids = new Map<string, string>();
      for (const item of items) {
        ctx.ruleInput = item.where;
        if (item.id !== undefined) ctx.rule = item.id;
        const checked = await c.addRule({ json: item.json, replace, validateOnly: true }, callOpts);
        const id = checked.rule?.id ?? item.id ?? "?";
        const twice = ids.get(id);
        if (twice !== undefined) throw new InputError(`${twice} and ${item.where} are both rule ${id}: one rule per service and guest`);
        ids.set(id, item.where);
      }
      ctx.ruleInput = undefined;
      for (const item of items) {
        if (item.id !== undefined) ctx.rule = item.id;
        const res = await c.addRule({ json: item.json, replace }, callOpts);
        const r = res.rule;
        const probes = r === undefined || r.probes.length === 0 ? "" : ` (needs probe groups ${r.probes.map((p) => p.probe).join(", ")} in guest ${r.guest}; see \`vesper rules\`)`;
        await writeLine(io.stdout, `${res.replaced ? "replaced" : "added"} rule ${r?.id ?? item.id ?? "?"}${probes}`);
      }
    });

  rules
    .command("rm")
    .description("remove a watch rule added through the API (rules of the rules file: edit the file)")
    .argument("<id>", "rule id <service>@<guest> (see `vesper rules`)")
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      ctx.rule = id;
      const { c } = connect(cmd, QUERY_TIMEOUT_MS);
      const res = await c.removeRule(id, callOpts);
      await writeLine(io.stdout, `removed rule ${res.id} (probe groups it needed stay loaded: \`vesper rmmod GUEST PROBE\` unloads one)`);
    });

  program
    .command("watch")
    .description("stream decoded events, one line each (Ctrl-C to stop)")
    .option("--guest <id>", "only this guest")
    .option("--probe <name>", "only this probe")
    .option("--event <name>", 'only this event: "system/event" or "event"')
    .option("--json", "one JSON object per line (ts is a string of guest ns; seq the stream sequence)")
    .option("--count <n>", "exit after n events")
    .option("--from-seq <n>", "replay from this stream sequence instead of only new events")
    .option("--live", "events as the host decodes them, before they are stored (sooner; no stream sequence, no replay)")
    .action(
      async (
        opts: { guest?: string; probe?: string; event?: string; json?: boolean; count?: string; fromSeq?: string; live?: boolean },
        cmd: Command,
      ) => {
        if (opts.guest !== undefined) ctx.guest = opts.guest;
        if (opts.probe !== undefined) ctx.probe = opts.probe;
        const count = parseCount("--count", opts.count, 1);
        const fromSeq = parseCount("--from-seq", opts.fromSeq, 1);
        if (opts.live && fromSeq !== undefined) throw new UsageError("--live starts at the next event: it cannot be combined with --from-seq");
        const { c } = connect(cmd, QUERY_TIMEOUT_MS);
        const stream = c.watch(
          {
            guest: opts.guest ?? "",
            probe: opts.probe ?? "",
            event: opts.event ?? "",
            fromStreamSeq: BigInt(fromSeq ?? 0),
            live: opts.live === true,
          },
          callOpts,
        );
        let n = 0;
        for await (const res of stream) {
          const line = opts.json ? JSON.stringify(eventToJson(res)) : formatEventLine(res);
          if (line === undefined) continue;
          await writeLine(io.stdout, line);
          if (res.kind?.$case === "event" && count !== undefined && ++n >= count) break;
        }
      },
    );

  try {
    await program.parseAsync([...argv], { from: "user" });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.code === "commander.help") {
        return 0;
      }
      return 2; // commander already printed the message
    }
    if (err instanceof UsageError) {
      io.stderr.write(`vesper: ${err.message}\n`);
      return 2;
    }
    if (err instanceof InputError) {
      io.stderr.write(`vesper: ${err.message}\n`);
      return 1;
    }
    if (signal?.aborted) return 130;
    io.stderr.write(formatError(toVesperError(err), ctx) + "\n");
    return 1;
  } finally {
    client?.close();
  }
}
