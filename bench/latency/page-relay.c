/*
 * The floor of Vesper's path inside the guest, for bench/latency: the least a tracefs reader
 * can do. A blocking read(2) of trace_pipe_raw (woken at the first event: the instance's
 * buffer_percent is 0), then the page straight into a virtio-serial port with one write(2),
 * length-prefixed (an empty frame first says it is ready). No event loop, no decoding, no protocol, no spool.
 *
 *   page-relay TRACE_PIPE_RAW PORT_DEVICE
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: page-relay TRACE_PIPE_RAW PORT_DEVICE\n");
    return 2;
  }
  int in = open(argv[1], O_RDONLY);
  int out = open(argv[2], O_WRONLY);
  if (in < 0 || out < 0) {
    perror(in < 0 ? argv[1] : argv[2]);
    return 1;
  }
  static uint8_t frame[4 + 65536];
  if (write(out, frame, 4) != 4) { /* an empty frame: ready */
    perror("write");
    return 1;
  }
  for (;;) {
    ssize_t n = read(in, frame + 4, sizeof frame - 4);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      perror("read");
      return 1;
    }
    if (n == 0) {
      /* tracing stopped or the file was flushed: the bench is over, or reopen and go on */
      close(in);
      in = open(argv[1], O_RDONLY);
      if (in < 0) return 0;
      continue;
    }
    uint32_t len = (uint32_t)n;
    memcpy(frame, &len, 4);
    for (ssize_t off = 0, total = n + 4; off < total;) {
      ssize_t w = write(out, frame + off, (size_t)(total - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        perror("write");
        return 1;
      }
      off += w;
    }
  }
}
