/**
 * Probes that ship with Vesper. Each is a plain ProbeSpec: nothing here is
 * compiled for a kernel; the guest creates them through tracefs. Next to each
 * spec, the documentation of every event it produces and of the fields that
 * matter (`vesper probes --describe NAME`).
 *
 * Tracepoints and kprobe symbols were checked against the Debian 6.1 cloud
 * kernel of the guest image (events/, kprobe_events); kprobe fetch args use
 * x86-64 registers (first args %di, %si, %dx, %cx, %r8, %r9). Kprobes sit only on
 * functions that run when the event happens, never on hot paths
 * (watchdog_timer_fn, check_hung_task and the like are deliberately not used).
 */
import { api, ring } from "@vesper/protocol";

const { DeliveryMode } = ring;

export interface BuiltinProbe {
  readonly spec: ring.ProbeSpec;
  /** One entry per event the spec produces ("system/event", kprobes as vesper_<probe>/<name>). */
  readonly events: readonly api.EventDoc[];
}

const COMMON = "Every event also carries pid and comm of the task that was running when it fired.";

function ev(name: string, doc: string, fields: Record<string, string>): api.EventDoc {
  return { name, doc, fields: Object.entries(fields).map(([n, d]) => ({ name: n, doc: d })) };
}

const kprobe = (name: string, symbol: string, fetchArgs: string[], filter = ""): ring.KprobeSpec => ({
  name,
  symbol,
  offset: 0n,
  fetchArgs,
  isReturn: false,
  filter,
  waitStatusArg: "",
});

/** TCP_LISTEN in the kernel's tcp_states.h. */
export const TCP_LISTEN = 10;

export const builtinProbeDocs: readonly BuiltinProbe[] = [
  {
    spec: {
      name: "process",
      description:
        "Process lifecycle: exec, fork and exit of every task; exit carries the exit code and the terminating signal " +
        "(sched_process_exit lacks them, so a do_exit kprobe reads do_exit's wait status).",
      uprobes: [],
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
    events: [
      ev("vesper_process/exit", `A task is exiting (kprobe on do_exit). ${COMMON}`, {
        exit_code: "exit status (0-255) when the task exited normally, else 0",
        signal: "number of the signal that killed the task, 0 when it exited normally",
        core_dumped: "1 when the kill dumped core",
        code: "do_exit's raw wait status",
      }),
      ev("sched/sched_process_exit", "A task has exited (every thread, not only the group leader).", {
        pid: "the exiting task's id (thread id)",
        comm: "its name",
        prio: "its priority",
      }),
      ev("sched/sched_process_exec", "A task executed a new program.", {
        filename: "path of the program",
        pid: "the task",
        old_pid: "its id before exec (differs when a thread of a multi-threaded process execs)",
      }),
      ev("sched/sched_process_fork", "A task created a child (process or thread).", {
        parent_pid: "the forking task",
        parent_comm: "its name",
        child_pid: "the new task",
        child_comm: "its name (the parent's, until it execs)",
      }),
    ],
  },
  {
    spec: {
      name: "memory",
      description:
        "Memory pressure: OOM kills (the victim with its memory figures, and the kind of OOM) and page allocation " +
        "failures the kernel warns about.",
      uprobes: [],
      kprobes: [
        kprobe("oom_kill", "oom_kill_process", ["message=+0(%si):string", "comm=$comm"]),
        kprobe("alloc_fail", "warn_alloc", ["gfp_mask=%di:x32", "comm=$comm"]),
      ],
      tracepoints: [{ system: "oom", event: "mark_victim", filter: "" }],
      bufferKbPerCpu: 64,
      delivery: DeliveryMode.DELIVERY_MODE_URGENT,
      flushIntervalMs: 0,
    },
    events: [
      ev(
        "oom/mark_victim",
        "The OOM killer chose a victim (it is being killed; its memory is reaped next). The task running is the one whose allocation triggered the OOM.",
        {
          pid: "the victim's pid",
          comm: "the victim's name",
          total_vm: "victim's virtual memory, kB",
          anon_rss: "victim's anonymous resident memory, kB",
          file_rss: "victim's file-backed resident memory, kB",
          shmem_rss: "victim's shared-memory resident memory, kB",
          uid: "victim's user id",
          pgtables: "victim's page tables, kB",
          oom_score_adj: "victim's oom_score_adj (-1000..1000)",
        },
      ),
      ev(
        "vesper_memory/oom_kill",
        "The kernel is about to kill a task for lack of memory (kprobe on oom_kill_process); precedes oom/mark_victim.",
        {
          message: '"Out of memory" for a system-wide OOM, "Memory cgroup out of memory" for a cgroup limit',
          comm: "the task whose allocation triggered the OOM",
        },
      ),
      ev("vesper_memory/alloc_fail", "A page allocation failed and the kernel printed a warning (kprobe on warn_alloc; allocations with __GFP_NOWARN are silent).", {
        gfp_mask: "the allocation's GFP flags (hex)",
        comm: "the allocating task",
      }),
    ],
  },
  {
    spec: {
      name: "network",
      description:
        "Network failures: a listening TCP socket closed (the service stopped accepting), an interface went down " +
        "(administratively, or lost its carrier), TCP resets sent and received.",
      uprobes: [],
      kprobes: [
        // inet_csk_listen_stop(sk) runs only when a listening socket closes; the local port is
        // sk->__sk_common.skc_num, at offset 14 of struct sock_common on 64-bit kernels since 2.6.
        kprobe("listen_close", "inet_csk_listen_stop", ["port=+14(%di):u16", "comm=$comm"]),
        // __dev_notify_flags(dev, old_flags, gchanges): IFF_UP (1) was set and changed, so the interface went down.
        kprobe("iface_down", "__dev_notify_flags", ["dev=+0(%di):string", "old_flags=%si:x32", "changes=%dx:x32", "comm=$comm"], "changes & 1 && old_flags & 1"),
        // netif_carrier_off(dev): the name is the first member of struct net_device.
        kprobe("carrier_off", "netif_carrier_off", ["dev=+0(%di):string", "comm=$comm"]),
      ],
      tracepoints: [
        { system: "sock", event: "inet_sock_set_state", filter: `oldstate == ${TCP_LISTEN}` },
        { system: "tcp", event: "tcp_send_reset", filter: "" },
        { system: "tcp", event: "tcp_receive_reset", filter: "" },
      ],
      bufferKbPerCpu: 128,
      delivery: DeliveryMode.DELIVERY_MODE_URGENT,
      flushIntervalMs: 0,
    },
    events: [
      ev(
        "sock/inet_sock_set_state",
        `A listening socket left TCP_LISTEN (filtered: oldstate == ${TCP_LISTEN}), i.e. it was closed: the service no longer accepts connections on that port. pid/comm are the task that closed it (usually the service itself, or the exiting task).`,
        {
          sport: "the port that was listening",
          oldstate: `${TCP_LISTEN} (TCP_LISTEN)`,
          newstate: "7 (TCP_CLOSE)",
          family: "2 AF_INET, 10 AF_INET6",
          protocol: "6 IPPROTO_TCP",
          saddr: "bound IPv4 address (4 bytes, hex; 00000000 = any)",
          saddr_v6: "bound IPv6 address (16 bytes, hex)",
        },
      ),
      ev(
        "vesper_network/listen_close",
        "A listening TCP socket is being closed (kprobe on inet_csk_listen_stop), in the context of the task closing it: the same moment as sock/inet_sock_set_state, with the task's name.",
        { port: "the port that was listening", comm: "the task closing it (the service itself when it exits or is killed)" },
      ),
      ev("vesper_network/iface_down", "An interface was set down (kprobe on __dev_notify_flags, filtered to IFF_UP cleared).", {
        dev: "interface name",
        old_flags: "its flags before (hex, IFF_UP = 0x1)",
        changes: "flags that changed (hex)",
        comm: "the task that set it down (e.g. ip)",
      }),
      ev("vesper_network/carrier_off", "An interface lost its carrier (link down, kprobe on netif_carrier_off).", {
        dev: "interface name",
        comm: "the running task",
      }),
      ev("tcp/tcp_send_reset", "This guest sent a TCP RST (a storm of them means connections are being refused or aborted).", {
        sport: "local port",
        dport: "remote port",
        state: "TCP state of the socket (0 when there is none)",
        saddr: "local IPv4 address",
        daddr: "remote IPv4 address",
      }),
      ev("tcp/tcp_receive_reset", "A peer reset a TCP connection of this guest.", {
        sport: "local port",
        dport: "remote port",
        saddr: "local IPv4 address",
        daddr: "remote IPv4 address",
        sock_cookie: "socket cookie",
      }),
    ],
  },
  {
    spec: {
      name: "storage",
      description: "Storage failures: block I/O requests that completed with an error, and ext4 errors (which remount the filesystem read-only under errors=remount-ro).",
      uprobes: [],
      kprobes: [
        // ext4_handle_error(sb, force_ro, error, ino, block, func, line)
        kprobe("ext4_error", "ext4_handle_error", [
          "force_ro=%si:u8",
          "error=%dx:s32",
          "ino=%cx:u32",
          "block=%r8:u64",
          "function=+0(%r9):string",
          "comm=$comm",
        ]),
      ],
      tracepoints: [{ system: "block", event: "block_rq_error", filter: "" }],
      bufferKbPerCpu: 64,
      delivery: DeliveryMode.DELIVERY_MODE_URGENT,
      flushIntervalMs: 0,
    },
    events: [
      ev("block/block_rq_error", "A block I/O request completed with an error.", {
        dev: "device number (major << 20 | minor)",
        sector: "first sector of the request",
        nr_sector: "sectors in the request",
        error: "negative errno (e.g. -5 EIO)",
        rwbs: "R read, W write, D discard, F flush, S sync, M metadata",
      }),
      ev(
        "vesper_storage/ext4_error",
        "ext4 detected an error (kprobe on ext4_handle_error). Unless mounted errors=continue, the filesystem is remounted read-only (errors=remount-ro) or the kernel panics (errors=panic).",
        {
          force_ro: "1 when the error forces read-only whatever the mount option",
          error: "errno of the error (0 when none)",
          ino: "inode concerned, 0 when none",
          block: "block concerned, 0 when none",
          function: "ext4 function that found the error",
          comm: "the task that hit it",
        },
      ),
    ],
  },
  {
    spec: {
      name: "kernel",
      description:
        "Kernel health: soft/hard lockup, hung task and RCU stall reports, WARN()ings, oopses and panics. Lockups, hung tasks and " +
        "stalls have no tracepoint; their console messages are caught with a filtered printk:console.",
      uprobes: [],
      kprobes: [
        kprobe("warn", "__warn", ["file=+0(%di):string", "line=%si:s32", "comm=$comm"]),
        kprobe("oops", "die", ["message=+0(%di):string", "err=%dx:s64", "comm=$comm"]),
        kprobe("panic", "panic", ["message=+0(%di):string", "comm=$comm"]),
      ],
      tracepoints: [
        {
          system: "printk",
          event: "console",
          filter:
            'msg ~ "*soft lockup*" || msg ~ "*hard LOCKUP*" || msg ~ "*blocked for more than*" || msg ~ "*detected stall*" || ' +
            'msg ~ "*detected expedited stall*" || msg ~ "*BUG: *" || msg ~ "*Oops*" || msg ~ "*Kernel panic*"',
        },
      ],
      bufferKbPerCpu: 64,
      delivery: DeliveryMode.DELIVERY_MODE_URGENT,
      flushIntervalMs: 0,
    },
    events: [
      ev(
        "printk/console",
        'A kernel message reporting trouble (filtered: soft lockup, hard LOCKUP, hung task "blocked for more than", RCU "detected stall", BUG:, Oops, Kernel panic).',
        { msg: 'the message line, e.g. "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [comm:pid]" or "INFO: task comm:pid blocked for more than 120 seconds."' },
      ),
      ev("vesper_kernel/warn", "A WARN() fired (kprobe on __warn).", {
        file: "source file of the WARN",
        line: "its line",
        comm: "the task running",
      }),
      ev("vesper_kernel/oops", "The kernel oopsed (kprobe on die); the task is killed, or the kernel panics with panic_on_oops.", {
        message: 'what happened, e.g. "Oops", "general protection fault"',
        err: "the error code",
        comm: "the task running",
      }),
      ev(
        "vesper_kernel/panic",
        "The kernel panics (kprobe on panic). Delivery is best effort: the guest may stop before the page ships; the host-side qmp/GUEST_PANICKED event (probe vmm) does not depend on the guest.",
        { message: "panic's format string (not the formatted text)", comm: "the task running" },
      ),
    ],
  },
];

/** Documentation of the host-generated events (not loadable: the host publishes them by itself). */
export const hostEventDocs: readonly { probe: string; description: string; events: readonly api.EventDoc[] }[] = [
  {
    probe: "vmm",
    description:
      "QEMU's own view of each guest, from its QMP socket (qemu-bridge, no guest cooperation). Event names are qmp/<QMP event>; fields are the QMP event's data, flattened with '.'.",
    events: [
      ev("qmp/GUEST_PANICKED", "The guest kernel panicked (pvpanic device).", { action: "pause, poweroff or run", "info.type": "e.g. hyper-v, s390 (often absent)" }),
      ev("qmp/SHUTDOWN", "The guest shut down (or QEMU is quitting).", { guest: "true when the guest initiated it", reason: "e.g. guest-shutdown, guest-panic, host-qmp-quit" }),
      ev("qmp/STOP", "The VM was paused.", {}),
      ev("qmp/RESUME", "The VM runs again.", {}),
      ev("qmp/RESET", "The VM was reset.", { guest: "true when the guest initiated it", reason: "why" }),
      ev("qmp/WATCHDOG", "The emulated watchdog device fired.", { action: "what QEMU does about it (reset, shutdown, pause, ...)" }),
      ev("qmp/QEMU_EXITED", "The QMP socket closed: QEMU exited or crashed.", { reason: "socket closed or error text" }),
    ],
  },
  {
    probe: "agent",
    description: "The guest frontend's liveness, judged by the probe-loader from the ring heartbeat (every idle hold).",
    events: [
      ev("agent/lost", "A guest frontend that was online sent nothing for agent_lost_ms.", {
        silent_ms: "how long it has been silent",
        last_seen_unix_ms: "host time of its last message",
        boot_id: "the guest boot it belonged to",
      }),
      ev("agent/back", "A lost guest frontend spoke again.", {
        silent_ms: "how long it was silent",
        rebooted: "1 when it came back with a different boot id",
        boot_id: "its boot id now",
      }),
      ev("agent/left", "A guest frontend said Goodbye: it stops on purpose, so no agent/lost follows its silence.", {
        reason: "what it gave (the signal that stopped it, or \"stopped\")",
        probes_kept: "1 when it left its probes loaded for the next frontend (an upgrade)",
      }),
    ],
  },
];

export const builtinProbes: readonly ring.ProbeSpec[] = builtinProbeDocs.map((b) => b.spec);
