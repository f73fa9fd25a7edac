// Runs INSIDE the guest (plain JS, node). Talks line by line over the bench virtio-serial port.
// Host -> guest: "P" ping (answer "p <mono_ns>"), "G <n> <gapMs>" run n kill iterations, "Q" quit.
// Guest -> host per iteration: "R <i> <mono_ns>" (raw channel sample, written at that instant),
// then after a kill: "K <i> <pid> <mono_ns of the kill>" (sent gap/2 later, off the measured path).
import fs from "node:fs";
import { spawn } from "node:child_process";
const dir = "/sys/class/virtio-ports";
let dev = "/dev/virtio-ports/org.vesper.bench";
for (const d of fs.readdirSync(dir)) {
  try { if (fs.readFileSync(`${dir}/${d}/name`, "utf8").trim() === "org.vesper.bench") dev = `/dev/${d}`; } catch {}
}
const fd = fs.openSync(dev, "r+");
const now = () => process.hrtime.bigint();
const send = (s) => fs.writeSync(fd, s + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The victim is a grandchild that init adopts: its death must not wake this (Node) driver for
// SIGCHLD on the measured path, where it would compete with the agent for the one vCPU.
async function orphanSleep() {
  const sh = spawn("/bin/sh", ["-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"], { stdio: ["ignore", "pipe", "ignore"] });
  let out = "";
  sh.stdout.on("data", (d) => (out += d));
  await new Promise((r) => sh.once("close", r));
  return Number(out.trim());
}
async function run(n, gap) {
  for (let i = 0; i < n; i++) {
    const pid = await orphanSleep();
    await sleep(gap / 2);
    send(`R ${i} ${now()}`);
    await sleep(gap / 2);
    const t = now();
    process.kill(pid, "SIGKILL");
    await sleep(gap / 2);
    send(`K ${i} ${pid} ${t}`);
  }
  send("D");
}
const buf = Buffer.alloc(4096);
let acc = "";
for (;;) {
  const n = await new Promise((res) => fs.read(fd, buf, 0, buf.length, null, (e, k) => res(e ? -1 : k)));
  if (n <= 0) { await sleep(10); continue; }
  acc += buf.subarray(0, n).toString();
  let nl;
  while ((nl = acc.indexOf("\n")) >= 0) {
    const line = acc.slice(0, nl).trim();
    acc = acc.slice(nl + 1);
    if (line === "P") send(`p ${now()}`);
    else if (line.startsWith("G ")) { const [, a, b] = line.split(" "); run(Number(a), Number(b)); }
    else if (line === "Q") process.exit(0);
  }
}
