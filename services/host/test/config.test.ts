import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode, VesperError } from "@vesper/protocol";
import { loadHostConfig } from "../src/config.js";
import { startHost } from "../src/host.js";

describe("host config", () => {
  it("takes the tokens file from --tokens, else VESPER_TOKENS_FILE", () => {
    assert.equal(loadHostConfig([], {}).tokensFile, undefined);
    assert.equal(loadHostConfig([], { VESPER_TOKENS_FILE: "/etc/vesper/tokens.json" }).tokensFile, "/etc/vesper/tokens.json");
    assert.equal(loadHostConfig(["--tokens", "/a.json"], { VESPER_TOKENS_FILE: "/b.json" }).tokensFile, "/a.json");
  });

  it("runs the rules service by default, with or without a rules file; API rules run commands only when allowed", () => {
    assert.ok(loadHostConfig([], {}).services.includes("rules"));
    assert.equal(loadHostConfig([], {}).rulesFile, undefined);
    assert.equal(loadHostConfig(["--rules", "/r.json"], {}).rulesFile, "/r.json");
    assert.equal(loadHostConfig([], {}).rulesAllowExec, false);
    assert.equal(loadHostConfig(["--rules-allow-exec"], {}).rulesAllowExec, true);
    assert.equal(loadHostConfig([], { VESPER_RULES_ALLOW_EXEC: "1" }).rulesAllowExec, true);
    assert.equal(loadHostConfig([], { VESPER_RULES_ALLOW_EXEC: "yes" }).rulesAllowExec, false);
  });

  it("refuses an unauthenticated gateway off loopback", async () => {
    const cfg = loadHostConfig(["--services", "gateway", "--listen", "0.0.0.0:0"], { VESPER_NATS_URL: process.env.VESPER_NATS_URL ?? "127.0.0.1:4222" });
    await assert.rejects(startHost(cfg), (e: unknown) => {
      assert.ok(e instanceof VesperError && e.code === ErrorCode.InvalidArgument);
      assert.match(e.message, /without authentication: give --tokens FILE/);
      return true;
    });
  });

  it("refuses a tokens file that does not parse, naming it", async () => {
    const cfg = loadHostConfig(["--services", "gateway", "--tokens", "/nonexistent/tokens.json"], {});
    await assert.rejects(startHost(cfg), /cannot read tokens file \/nonexistent\/tokens\.json/);
  });
});
