/**
 * Probes that ship with Vesper. Each is a plain ProbeSpec: nothing here is
 * compiled for a kernel; the guest creates them through tracefs.
 */
import { ring } from "@vesper/protocol";

const { DeliveryMode } = ring;

export const builtinProbes: readonly ring.ProbeSpec[] = [
  {
    name: "process",
    description:
      "Process lifecycle: exec, fork and exit of every task; exit carries the exit code and the terminating signal " +
      "(sched_process_exit lacks them, so a do_exit kprobe reads do_exit's wait status).",
    kprobes: [
      {
        name: "exit",
        symbol: "do_exit",
        offset: 0n,
        fetchArgs: ["code=%di:s64", "comm=$comm"],
        isReturn: false,
        filter: "",
        waitStatusArg: "code",
      },
    ],
    tracepoints: [
      { system: "sched", event: "sched_process_exit", filter: "" },
      { system: "sched", event: "sched_process_exec", filter: "" },
      { system: "sched", event: "sched_process_fork", filter: "" },
    ],
    bufferKbPerCpu: 512,
    delivery: DeliveryMode.DELIVERY_MODE_URGENT,
    flushIntervalMs: 0,
  },
];
