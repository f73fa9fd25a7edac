/** Names that end up in NATS subjects, tracefs paths and kprobe definitions. */
import { ErrorCode, VesperError } from "./errors.js";

/** A guest id is one NATS subject token: no dots, spaces or wildcards. */
export const GUEST_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
/** A probe name is also a kprobe group suffix and a tracefs instance suffix. */
export const PROBE_NAME_RE = /^[a-z][a-z0-9_]{0,31}$/;

export function checkGuestId(id: string): string {
  if (!GUEST_ID_RE.test(id)) {
    throw new VesperError(
      ErrorCode.InvalidArgument,
      `invalid guest id ${JSON.stringify(id)}: use letters, digits, '-' or '_' (at most 63)`,
    );
  }
  return id;
}

export function checkProbeName(name: string): string {
  if (!PROBE_NAME_RE.test(name)) {
    throw new VesperError(
      ErrorCode.InvalidArgument,
      `invalid probe name ${JSON.stringify(name)}: lower-case letter first, then [a-z0-9_] (at most 32)`,
    );
  }
  return name;
}

/** A watch rule's service name: also a state file name part and a KV key token. */
export const SERVICE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

/** A watch rule's id: one rule per service and guest. */
export function ruleId(service: string, guest: string): string {
  return `${service}@${guest}`;
}

/** Splits and checks a rule id "<service>@<guest>". */
export function checkRuleId(id: string): { service: string; guest: string } {
  const at = id.indexOf("@");
  const service = id.slice(0, at);
  const guest = id.slice(at + 1);
  if (at < 0 || !SERVICE_NAME_RE.test(service) || !GUEST_ID_RE.test(guest)) {
    throw new VesperError(ErrorCode.InvalidArgument, `invalid rule id ${JSON.stringify(id)}: use <service>@<guest>, e.g. web@web1`);
  }
  return { service, guest };
}
