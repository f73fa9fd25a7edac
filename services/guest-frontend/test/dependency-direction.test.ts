/**
 * The guest side depends only on shared protocol code (as Temporal's sandboxed
 * workflow package does): it runs in an untrusted, minimal guest, bundled alone.
 * Host services never import guest code either.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const SERVICES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    if (statSync(p).isDirectory()) return f === "generated" ? [] : sources(p);
    return p.endsWith(".ts") ? [p] : [];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  return [...text.matchAll(/(?:^|\n)\s*(?:import|export)[^"'`;]*?from\s+["']([^"']+)["']/g)].map((m) => m[1]!);
}

test("the guest frontend imports only @vesper/protocol, node builtins and the NATS client", () => {
  const allowed = (spec: string): boolean =>
    spec.startsWith("node:") || spec.startsWith(".") || spec === "@vesper/protocol" || spec === "@nats-io/transport-node";
  const bad = sources(path.join(SERVICES, "guest-frontend", "src")).flatMap((f) =>
    imports(f).filter((s) => !allowed(s)).map((s) => `${path.relative(SERVICES, f)} imports ${s}`),
  );
  assert.deepEqual(bad, []);
});

test("no host service imports guest code, and protocol imports no service", () => {
  const bad: string[] = [];
  for (const svc of readdirSync(SERVICES)) {
    const src = path.join(SERVICES, svc, "src");
    if (svc === "guest-frontend" || !statSync(path.join(SERVICES, svc)).isDirectory()) continue;
    for (const f of (() => { try { return sources(src); } catch { return []; } })()) {
      for (const s of imports(f)) {
        if (s === "@vesper/guest-frontend" || s.includes("guest-frontend/")) bad.push(`${svc}: ${path.basename(f)} imports ${s}`);
        if (svc === "protocol" && s.startsWith("@vesper/")) bad.push(`protocol: ${path.basename(f)} imports ${s}`);
      }
    }
  }
  assert.deepEqual(bad, []);
});

test("the guest bundle leaves out the host's gRPC stack (protocol is side-effect free, so its api module drops out)", async () => {
  const { build } = await import("esbuild");
  const out = await build({
    entryPoints: [path.join(SERVICES, "guest-frontend", "src", "main.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    write: false,
    metafile: true,
    logLevel: "silent",
  });
  // What made it into the output (metafile.inputs also lists what tree shaking dropped).
  const output = Object.values(out.metafile.outputs)[0]!;
  const inputs = Object.entries(output.inputs).filter(([, v]) => v.bytesInOutput > 0).map(([k]) => k);
  assert.deepEqual(inputs.filter((i) => /@grpc\/|protobufjs|generated\/vesper\/api\//.test(i)), []);
  assert.ok(inputs.some((i) => i.includes("generated/vesper/ring/")), "the ring protocol is in the bundle");
});
