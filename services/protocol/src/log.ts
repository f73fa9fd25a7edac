/**
 * Structured logs (pino) to stderr, so stdout stays free for command output.
 * VESPER_LOG_LEVEL sets the level (default info); VESPER_TRACE=ring,decoder
 * switches on named debug tracers without a code change.
 */
import { pino, type Logger } from "pino";

export type { Logger };

const traced = new Set((process.env.VESPER_TRACE ?? "").split(",").map((s) => s.trim()).filter(Boolean));

export function isTraced(tracer: string): boolean {
  return traced.has(tracer) || traced.has("all");
}

export function createLogger(name: string, level = process.env.VESPER_LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level, base: { svc: name } }, pino.destination(2));
}
