/**
 * A nats-server configuration with one user per guest, each allowed only its own
 * ring subjects, and one user for the host services with full rights. Written by
 * `scripts/nats-config.ts` (see deploy/nats/README.md).
 *
 *   guest <id>:  publish   vesper.ring.<id>.up.>   (ctl and data)
 *                subscribe vesper.ring.<id>.down   (answers)
 *   host:        publish and subscribe >           (the bus, JetStream API, KV, every ring)
 *
 * A guest publishing anywhere else gets a permissions violation from the server
 * and the message is dropped there: no host service ever sees it. It cannot read
 * another guest's down subject either. The guest frontend needs no _INBOX: it
 * never makes requests.
 */
import { randomBytes } from "node:crypto";
import { checkGuestId, subjects } from "@vesper/protocol";

export const HOST_NATS_USER = "vesper-host";

export interface NatsUser {
  readonly user: string;
  readonly password: string;
}

export interface NatsAuthOptions {
  /** Guest ids; each gets user "guest-<id>". */
  guests: readonly string[];
  /** Existing passwords to keep (user -> password); the rest are generated. */
  keep?: Readonly<Record<string, string>>;
  /** host:port the server listens on (default 127.0.0.1:4222). */
  listen?: string;
  /** JetStream store directory (default /var/lib/vesper/nats). */
  storeDir?: string;
}

export interface NatsAuth {
  /** nats-server.conf text. */
  config: string;
  host: NatsUser;
  guests: ReadonlyMap<string, NatsUser>;
}

export function guestNatsUser(guest: string): string {
  return `guest-${checkGuestId(guest)}`;
}

/** A password of 32 URL-safe characters (no quoting or URL-escaping needed). */
export function newPassword(): string {
  return randomBytes(24).toString("base64url");
}

/** The ring subjects a guest may publish to and subscribe to. */
export function guestPermissions(guest: string): { publish: string[]; subscribe: string[] } {
  checkGuestId(guest);
  return { publish: [`vesper.ring.${guest}.up.>`], subscribe: [subjects.ringDown(guest)] };
}

const q = (s: string): string => JSON.stringify(s);

export function natsAuthConfig(o: NatsAuthOptions): NatsAuth {
  const pw = (user: string): string => o.keep?.[user] ?? newPassword();
  const host: NatsUser = { user: HOST_NATS_USER, password: pw(HOST_NATS_USER) };
  const guests = new Map<string, NatsUser>();
  for (const g of o.guests) {
    const user = guestNatsUser(g);
    if (guests.has(g)) continue;
    guests.set(g, { user, password: pw(user) });
  }
  const lines = [
    "# Vesper: one NATS user per guest, limited to its own ring subjects. Generated; keep it mode 0600.",
    `listen: ${o.listen ?? "127.0.0.1:4222"}`,
    `jetstream { store_dir: ${q(o.storeDir ?? "/var/lib/vesper/nats")} }`,
    "authorization {",
    "  users = [",
    `    { user: ${q(host.user)}, password: ${q(host.password)}, permissions: { publish: ">", subscribe: ">" } }`,
  ];
  for (const [g, u] of guests) {
    const p = guestPermissions(g);
    lines.push(
      `    { user: ${q(u.user)}, password: ${q(u.password)}, permissions: {`,
      `        publish: { allow: [${p.publish.map(q).join(", ")}] }`,
      `        subscribe: { allow: [${p.subscribe.map(q).join(", ")}] } } }`,
    );
  }
  lines.push("  ]", "}", "");
  return { config: lines.join("\n"), host, guests };
}

/** nats://user:pass@host:port for host services' --nats. */
export function natsUrlWithCredentials(u: NatsUser, hostPort: string): string {
  return `nats://${encodeURIComponent(u.user)}:${encodeURIComponent(u.password)}@${hostPort}`;
}
