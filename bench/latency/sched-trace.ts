/**
 * What the guest's one vCPU does between a victim's do_exit and the agent's read of the page:
 * boots a guest with the `process` probe loaded, kills a few `sleep`s from a shell loop, and
 * prints the guest kernel's own trace (sched_switch/wakeup, irq_work, timer interrupts, the
 * agent's read and epoll_wait calls) from just before the last victim's do_exit.
 *
 *   node --import tsx bench/latency/sched-trace.ts [--lines 60] [--nice N]
 */
import { setTimeout as sleep } from "node:timers/promises";
import { bootGuest, startStack } from "../lib/stack.js";
import { argOf } from "../lib/report.js";

const LINES = Number(argOf("--lines", "60"));
const NICE = argOf("--nice", "") ?? "";
const GUEST = "vsch1";
const I = "/sys/kernel/tracing/instances/vbench_sched";
const EVENTS = [
  "sched/sched_switch",
  "sched/sched_waking",
  "sched/sched_wakeup",
  "irq_vectors/irq_work_entry",
  "irq_vectors/irq_work_exit",
  "irq_vectors/local_timer_entry",
  "syscalls/sys_enter_read",
  "syscalls/sys_exit_read",
  "syscalls/sys_enter_readv",
  "syscalls/sys_enter_writev",
  "syscalls/sys_enter_epoll_wait",
  "syscalls/sys_exit_epoll_wait",
  "vbench_sched/doexit",
];

const stack = await startStack({ prefix: "vsch" });
const guest = await bootGuest(stack, GUEST, { appendExtra: NICE === "" ? [] : [`vesper.nice=${NICE}`] });
try {
  await stack.client.insmod({ guest: GUEST, probe: "process", options: {} });
  const setup = await guest.exec(
    `echo 'p:vbench_sched/doexit do_exit' >> /sys/kernel/tracing/kprobe_events && mkdir -p ${I} && echo 4096 > ${I}/buffer_size_kb && ` +
      EVENTS.map((e) => `echo 1 > ${I}/events/${e}/enable`).join(" && ") +
      " && echo traced",
  );
  if (!setup.output.includes("traced")) throw new Error(`tracing setup failed: ${setup.output}`);
  await guest.exec("for i in 1 2 3 4 5 6; do sleep 1000 & p=$!; sleep 0.1; kill -9 $p; sleep 0.2; done", { timeoutMs: 120_000 });
  await sleep(500);
  await guest.exec(`echo 0 > ${I}/tracing_on`);
  const agent = (await guest.exec("cat /run/frontend.pid")).output.trim();
  // The last victim: a `sleep` whose do_exit follows a kill (the loop's own `sleep 0.1`s exit too; any of them shows the pattern).
  const out = await guest.exec(
    `L=$(grep -n 'sleep-[0-9]* .*doexit' ${I}/trace | tail -2 | head -1 | cut -d: -f1); sed -n "$((L-3)),$((L+${LINES}))p" ${I}/trace`,
    { timeoutMs: 60_000 },
  );
  console.log(`the agent is node-${agent}${NICE === "" ? "" : ` (nice ${NICE})`}; trace from just before a victim's do_exit:\n${out.output}`);
} finally {
  await guest.exec(`echo 0 > ${I}/tracing_on; rmdir ${I}; echo '-:vbench_sched/doexit' >> /sys/kernel/tracing/kprobe_events`).catch(() => undefined);
  await guest.stop();
  await stack.stop();
}
