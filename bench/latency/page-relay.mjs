// page-relay.c in JavaScript, for bench/latency --floor js|js-poll: each page of trace_pipe_raw
// into the port with one length-prefixed write (an empty frame first says it is ready).
//   node --jitless page-relay.mjs TRACE_PIPE_RAW PORT_DEVICE [block|poll]
// block: a blocking readSync loop on the main thread, no event loop turn between read and write.
// poll: the guest frontend's own wait (libuv polls the non-blocking fd in the event loop and
// reads the page; the write follows in the callback). Against the C relay and each other they
// show what Node, and then its event loop, cost on this path.
import fs from "node:fs";
import net from "node:net";
const [inPath, outPath, mode = "block"] = process.argv.slice(2);
const fout = fs.openSync(outPath, "w");
const frame = Buffer.alloc(4 + 65536);
const send = (n) => {
  frame.writeUInt32LE(n, 0);
  for (let off = 0; off < n + 4; ) off += fs.writeSync(fout, frame, off, n + 4 - off);
};
send(0);
if (mode === "poll") {
  const { Pipe, constants } = process.binding("pipe_wrap");
  const open = () => {
    const handle = new Pipe(constants.SOCKET);
    const rc = handle.open(fs.openSync(inPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK));
    if (rc !== 0) throw new Error(`cannot poll ${inPath}: libuv error ${rc}`);
    const page = frame.subarray(4);
    const s = new net.Socket({ handle, readable: true, writable: false, onread: { buffer: page, callback: (n) => (send(n), true) } });
    s.on("end", () => (s.destroy(), open())); // EOF: tracing stopped or the file was flushed
    s.on("error", (err) => { console.error(err); process.exit(1); });
  };
  open();
} else {
  let fin = fs.openSync(inPath, "r");
  for (;;) {
    let n;
    try {
      n = fs.readSync(fin, frame, 4, frame.length - 4, null);
    } catch (err) {
      if (err.code === "EINTR" || err.code === "EAGAIN") continue;
      throw err;
    }
    if (n === 0) {
      fs.closeSync(fin);
      fin = fs.openSync(inPath, "r");
      continue;
    }
    send(n);
  }
}
