import assert from "node:assert/strict";
import { test } from "node:test";
import { loadFrontendConfig } from "../src/config.js";

const base = ["--guest-id", "g1"];

test("--nice (or VESPER_NICE) sets the frontend's nice value; unset leaves it alone; out of range is refused", () => {
  assert.equal(loadFrontendConfig(base, {}).nice, undefined);
  assert.equal(loadFrontendConfig([...base, "--nice=-10"], {}).nice, -10);
  assert.equal(loadFrontendConfig(base, { VESPER_NICE: "5" }).nice, 5);
  assert.equal(loadFrontendConfig(base, { VESPER_NICE: "" }).nice, undefined, "the image passes an empty value for none");
  assert.throws(() => loadFrontendConfig([...base, "--nice=-21"], {}), /--nice must be an integer in \[-20, 19\]/);
  assert.throws(() => loadFrontendConfig(base, { VESPER_NICE: "high" }), /--nice must be an integer/);
});

test("--coalesce-max-ms (or VESPER_COALESCE_MAX_MS) bounds the urgent readers' wait under load; default 250 ms", () => {
  assert.equal(loadFrontendConfig(base, {}).coalesceMaxMs, 250);
  assert.equal(loadFrontendConfig([...base, "--coalesce-max-ms", "100"], {}).coalesceMaxMs, 100);
  assert.equal(loadFrontendConfig(base, { VESPER_COALESCE_MAX_MS: "40" }).coalesceMaxMs, 40);
  assert.throws(() => loadFrontendConfig([...base, "--coalesce-max-ms", "5"], {}), /--coalesce-max-ms must be an integer in \[10, 10000\]/);
});
