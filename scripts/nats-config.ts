/**
 * Writes a nats-server config with one user per guest (see deploy/nats/README.md):
 *
 *   node --import tsx scripts/nats-config.ts --guest web1 --guest web2 \
 *     --out /etc/nats/vesper.conf --secrets /etc/vesper/nats-users.json [--listen 0.0.0.0:4222] [--store-dir DIR]
 *
 * Passwords already in the secrets file are kept, so adding a guest does not
 * change the others'. Both files are written mode 0600.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { natsAuthConfig, natsUrlWithCredentials } from "@vesper/host";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    guest: { type: "string", multiple: true },
    out: { type: "string" },
    secrets: { type: "string" },
    listen: { type: "string" },
    "store-dir": { type: "string" },
  },
  strict: true,
});
if (values.out === undefined || values.secrets === undefined) {
  process.stderr.write("usage: nats-config.ts --guest ID [--guest ID ...] --out CONFIG --secrets USERS.json [--listen ADDR] [--store-dir DIR]\n");
  process.exit(2);
}
const keep: Record<string, string> = existsSync(values.secrets)
  ? (JSON.parse(readFileSync(values.secrets, "utf8")) as { users: Record<string, string> }).users
  : {};
const listen = values.listen ?? "127.0.0.1:4222";
const auth = natsAuthConfig({ guests: values.guest ?? [], keep, listen, storeDir: values["store-dir"] });
const users: Record<string, string> = { [auth.host.user]: auth.host.password };
for (const u of auth.guests.values()) users[u.user] = u.password;
writeFileSync(values.out, auth.config, { mode: 0o600 });
writeFileSync(values.secrets, JSON.stringify({ users }, null, 2) + "\n", { mode: 0o600 });
process.stdout.write(
  [
    `wrote ${values.out} (${auth.guests.size} guests) and ${values.secrets}`,
    `host:   vesper-host --nats '${natsUrlWithCredentials(auth.host, listen).replace(auth.host.password, "<password>")}'`,
    ...[...auth.guests].map(([g, u]) => `guest:  guest-frontend --guest-id ${g} --transport nats --nats <server> --nats-user ${u.user} --nats-pass <password>`),
    "",
  ].join("\n"),
);
