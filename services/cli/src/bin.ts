#!/usr/bin/env node
/** The `vesper` executable (bundled to dist/vesper.mjs). */
import { main } from "./main.js";

const ac = new AbortController();
process.once("SIGINT", () => ac.abort());
process.once("SIGTERM", () => ac.abort());
// `vesper watch | head`: stop quietly when the reader goes away.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") ac.abort();
  else throw err;
});

process.exitCode = await main(process.argv.slice(2), { signal: ac.signal });
