import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { splitCredentials } from "@vesper/host-common";

describe("NATS URLs with credentials", () => {
  it("takes user/pass or a token out of the URL", () => {
    assert.deepEqual(splitCredentials("127.0.0.1:4222"), { servers: ["127.0.0.1:4222"], auth: undefined });
    assert.deepEqual(splitCredentials("nats://vesper-host:p%40ss@127.0.0.1:4333"), {
      servers: ["nats://127.0.0.1:4333"],
      auth: { user: "vesper-host", pass: "p@ss" },
    });
    assert.deepEqual(splitCredentials("nats://s3cr3t@10.0.0.1:4222,nats://10.0.0.2:4222"), {
      servers: ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
      auth: { token: "s3cr3t" },
    });
  });
});
