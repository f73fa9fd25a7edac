/**
 * Bearer-token authentication for the gRPC API, plugged into the gateway's
 * `authorize` hook. Clients send `authorization: Bearer <token>` metadata; the
 * tokens file says which client a token belongs to and which RPCs it may call.
 *
 * Tokens file (JSON, e.g. /etc/vesper/tokens.json, mode 0600):
 *
 *   {
 *     "clients": [
 *       { "name": "ops",     "token": "s3cr3t-ops-token-…",  "allow": ["*"] },
 *       { "name": "pacemaker", "token": "…",                  "allow": ["read", "insmod"] },
 *       { "name": "deploy",  "token": "…",                    "allow": ["read", "rules-add", "rules-rm"] },
 *       { "name": "grafana", "sha256": "<hex of sha256(token)>", "allow": ["read"] }
 *     ]
 *   }
 *
 * - `name`: shown in the gateway's log for every refused call.
 * - `token` (at least 16 characters) or `sha256` (the token's SHA-256 in hex, so
 *   the file need not hold the secret itself). Tokens must be unique.
 * - `allow`: RPC names (VirtInsmod, VirtRmmod, ListGuests, ListProbes, WatchEvents,
 *   ListRules, AddRule, RemoveRule), the CLI's words for them (insmod, rmmod, guests,
 *   probes, watch, rules, rules-add, rules-rm), "read" (guests, probes, watch and rules:
 *   nothing that changes anything) or "*" (everything). AddRule and RemoveRule change
 *   what the host does on a failure (Pacemaker, webhooks), like insmod/rmmod change guests.
 *
 * No token, or an unknown one: UNAUTHENTICATED. A known token calling an RPC it
 * is not allowed: PERMISSION_DENIED.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { ErrorCode, VesperError } from "@vesper/protocol";
import type { AuthorizeFn } from "./options.js";

export const RPC_METHODS = [
  "VirtInsmod",
  "VirtRmmod",
  "ListGuests",
  "ListProbes",
  "WatchEvents",
  "ListRules",
  "AddRule",
  "RemoveRule",
] as const;
export type RpcMethod = (typeof RPC_METHODS)[number];

const ALIASES: Readonly<Record<string, readonly RpcMethod[]>> = {
  "*": RPC_METHODS,
  read: ["ListGuests", "ListProbes", "WatchEvents", "ListRules"],
  insmod: ["VirtInsmod"],
  rmmod: ["VirtRmmod"],
  guests: ["ListGuests"],
  probes: ["ListProbes"],
  watch: ["WatchEvents"],
  rules: ["ListRules"],
  "rules-add": ["AddRule"],
  "rules-rm": ["RemoveRule"],
  ...Object.fromEntries(RPC_METHODS.map((m) => [m, [m]])),
};

export interface TokenClient {
  readonly name: string;
  /** SHA-256 of the token. */
  readonly digest: Buffer;
  readonly allow: ReadonlySet<RpcMethod>;
}

function invalid(where: string, msg: string): VesperError {
  return new VesperError(ErrorCode.InvalidArgument, `tokens file ${where}: ${msg}`);
}

function sha256(s: string): Buffer {
  return createHash("sha256").update(s, "utf8").digest();
}

/** Parses and checks a tokens file's text; `where` names it in errors. */
export function parseTokens(text: string, where = "(inline)"): TokenClient[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw invalid(where, `not valid JSON: ${(err as Error).message}`);
  }
  const clients = (doc as { clients?: unknown } | null)?.clients;
  if (!Array.isArray(clients)) throw invalid(where, `expected {"clients": [...]}`);
  const out: TokenClient[] = [];
  const seen = new Set<string>();
  clients.forEach((c: unknown, i) => {
    const at = `clients[${i}]`;
    if (typeof c !== "object" || c === null) throw invalid(where, `${at} is not an object`);
    const { name, token, sha256: hex, allow } = c as Record<string, unknown>;
    if (typeof name !== "string" || !/^[A-Za-z0-9_.@-]{1,64}$/.test(name)) {
      throw invalid(where, `${at}.name must be 1-64 characters of [A-Za-z0-9_.@-]`);
    }
    let digest: Buffer;
    if (typeof token === "string" && hex === undefined) {
      if (token.length < 16) throw invalid(where, `${at} (${name}): the token must be at least 16 characters`);
      digest = sha256(token);
    } else if (typeof hex === "string" && token === undefined && /^[0-9a-fA-F]{64}$/.test(hex)) {
      digest = Buffer.from(hex, "hex");
    } else {
      throw invalid(where, `${at} (${name}): give either "token" (the secret) or "sha256" (64 hex digits), not both`);
    }
    if (seen.has(digest.toString("hex"))) throw invalid(where, `${at} (${name}): the same token is given twice`);
    seen.add(digest.toString("hex"));
    if (!Array.isArray(allow) || allow.length === 0) throw invalid(where, `${at} (${name}): "allow" must be a non-empty list`);
    const methods = new Set<RpcMethod>();
    for (const a of allow) {
      const m = typeof a === "string" ? ALIASES[a] : undefined;
      if (m === undefined) {
        throw invalid(where, `${at} (${name}): unknown permission ${JSON.stringify(a)}; use ${Object.keys(ALIASES).join(", ")}`);
      }
      for (const x of m) methods.add(x);
    }
    out.push({ name, digest, allow: methods });
  });
  if (out.length === 0) throw invalid(where, "no clients: every call would be refused");
  return out;
}

export function loadTokensFile(file: string): TokenClient[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new VesperError(ErrorCode.InvalidArgument, `cannot read tokens file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseTokens(text, file);
}

/** The bearer token of a call's metadata, or undefined. */
export function bearerToken(values: readonly (string | Buffer)[]): string | undefined {
  const v = values[0];
  if (typeof v !== "string") return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(v);
  return m?.[1];
}

/** An `authorize` hook that checks bearer tokens against `clients`. */
export function tokenAuthorizer(clients: readonly TokenClient[]): AuthorizeFn {
  return ({ method, metadata }) => {
    const token = bearerToken(metadata.get("authorization"));
    if (token === undefined) {
      throw new VesperError(ErrorCode.Unauthenticated, "this gateway needs a bearer token and the call had none");
    }
    const d = sha256(token);
    // Compare against every client, in constant time each, so timing says nothing.
    let found: TokenClient | undefined;
    for (const c of clients) if (timingSafeEqual(c.digest, d) && found === undefined) found = c;
    if (found === undefined) throw new VesperError(ErrorCode.Unauthenticated, "the bearer token is not known to this gateway");
    if (!found.allow.has(method as RpcMethod)) {
      throw new VesperError(ErrorCode.PermissionDenied, `client ${found.name} may not call ${method}`);
    }
  };
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|\[?::1\]?)$/;

/** Whether a listen address "host:port" binds only loopback. */
export function isLoopbackListen(listen: string): boolean {
  const i = listen.lastIndexOf(":");
  const host = i < 0 ? listen : listen.slice(0, i);
  return LOOPBACK.test(host);
}
