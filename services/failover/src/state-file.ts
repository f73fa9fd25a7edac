/**
 * The state file shared with the OCF agent (deploy/ocf/guest-service):
 * <stateDir>/<guest>.<service>.state holds one JSON object {"state": "active"|"stopped"|"failed", ...}.
 * The agent writes "active" on start and "stopped" on stop; this service writes "failed" with the reason.
 * Writes are atomic (temp file + rename).
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";

export type ServiceState = "active" | "stopped" | "failed" | "none";

export function stateFilePath(stateDir: string, guest: string, service: string): string {
  return path.join(stateDir, `${guest}.${service}.state`);
}

export function readServiceState(stateDir: string, guest: string, service: string): ServiceState {
  let text: string;
  try {
    text = readFileSync(stateFilePath(stateDir, guest, service), "utf8");
  } catch {
    return "none";
  }
  const m = /"state"\s*:\s*"([a-z]+)"/.exec(text);
  const s = m?.[1];
  return s === "active" || s === "stopped" || s === "failed" ? s : "none";
}

export function writeServiceState(stateDir: string, guest: string, service: string, state: ServiceState, extra: Record<string, unknown> = {}): void {
  mkdirSync(stateDir, { recursive: true });
  const file = stateFilePath(stateDir, guest, service);
  const tmp = `${file}.tmp.${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify({ state, by: "vesper-rules", at_unix_ms: Date.now(), ...extra })}\n`);
  renameSync(tmp, file);
}
