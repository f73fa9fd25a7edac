// Bundles each executable into one file under dist/ with esbuild: the guest
// frontend must run from a minimal initramfs with no node_modules, and the host
// tools start faster without module resolution.
import { build } from "esbuild";

const entries = {
  "guest-frontend": "services/guest-frontend/src/main.ts",
  "vesper-host": "services/host/src/main.ts",
  vesper: "services/cli/src/bin.ts",
};

await Promise.all(
  Object.entries(entries).map(([name, entry]) =>
    build({
      entryPoints: [entry],
      outfile: `dist/${name}.mjs`,
      bundle: true,
      platform: "node",
      target: "node20",
      format: "esm",
      sourcemap: "linked",
      legalComments: "none",
      logLevel: "warning",
      // CommonJS dependencies call require() for node builtins.
      banner: { js: "import { createRequire as __vesperCreateRequire } from 'node:module';\nconst require = __vesperCreateRequire(import.meta.url);" },
    }),
  ),
);
console.log(`bundled ${Object.keys(entries).map((n) => `dist/${n}.mjs`).join(", ")}`);
