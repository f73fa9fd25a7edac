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
