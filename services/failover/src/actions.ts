/**
 * Runs a rule's actions. Each returns an outcome (never throws): ok, what it did, how long it took,
 * and why it failed.
 */
import { spawn } from "node:child_process";
import type { Action, Rule } from "./rules.js";

export interface ActionOutcome {
  action: string;
  ok: boolean;
  /** What was run / called. */
  target: string;
  durationUs: number;
  detail: string;
}

/** What an action is told about the failure (webhook body, exec stdin and VESPER_* environment). */
export interface FailureNotice {
  service: string;
  guest: string;
  rule: string;
  reason: Record<string, string | number>;
  event_unix_ns: string;
  fired_unix_ms: number;
}

function runArgv(argv: string[], timeoutMs: number, env: NodeJS.ProcessEnv, stdin: string): Promise<{ ok: boolean; detail: string }> {
  return new Promise((resolve) => {
    let out = "";
    let settled = false;
    const done = (r: { ok: boolean; detail: string }): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"], env });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      done({ ok: false, detail: `timed out after ${timeoutMs} ms; output: ${out.trim().slice(-500)}` });
    }, timeoutMs);
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.stdin.on("error", () => undefined);
    child.stdin.end(stdin);
    child.once("error", (err) => done({ ok: false, detail: `cannot run ${argv[0]}: ${err.message}` }));
    child.once("close", (code, signal) => {
      const tail = out.trim().slice(-500);
      if (code === 0) done({ ok: true, detail: tail });
      else done({ ok: false, detail: `${signal !== null ? `killed by ${signal}` : `exit status ${code}`}${tail ? `: ${tail}` : ""}` });
    });
  });
}

export function actionArgv(a: Extract<Action, { kind: "pacemaker" }>): string[] {
  return [...a.prefix, a.crmResource, "--fail", "--resource", a.resource, "--node", a.node];
}

export async function runAction(a: Action, rule: Rule, notice: FailureNotice): Promise<ActionOutcome> {
  const t0 = process.hrtime.bigint();
  const us = (): number => Number((process.hrtime.bigint() - t0) / 1000n);
  const body = JSON.stringify(notice);
  switch (a.kind) {
    case "pacemaker": {
      const argv = actionArgv(a);
      const r = await runArgv(argv, a.timeoutMs, process.env, "");
      return { action: "pacemaker", ok: r.ok, target: argv.join(" "), durationUs: us(), detail: r.detail };
    }
    case "exec": {
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        VESPER_SERVICE: rule.service,
        VESPER_GUEST: rule.guest,
        VESPER_RULE: rule.id,
        VESPER_REASON: JSON.stringify(notice.reason),
      };
      const r = await runArgv(a.argv, a.timeoutMs, env, body);
      return { action: "exec", ok: r.ok, target: a.argv.join(" "), durationUs: us(), detail: r.detail };
    }
    case "webhook": {
      try {
        const res = await fetch(a.url, {
          method: "POST",
          headers: { "content-type": "application/json", ...a.headers },
          body,
          signal: AbortSignal.timeout(a.timeoutMs),
        });
        const text = (await res.text().catch(() => "")).slice(0, 500);
        return { action: "webhook", ok: res.ok, target: a.url, durationUs: us(), detail: `HTTP ${res.status}${text ? `: ${text}` : ""}` };
      } catch (err) {
        return { action: "webhook", ok: false, target: a.url, durationUs: us(), detail: (err as Error).message };
      }
    }
  }
}
