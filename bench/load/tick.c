/*
 * A simulated guest's service for bench/scale: each SIGUSR1 runs vesper_tick(), where
 * that guest's uprobe sits. Every guest gets its own copy of this file (its own inode),
 * so a hit fires only that guest's probe, as when each guest has its own kernel.
 * Prints "ready" once the handler is in place.
 */
#include <signal.h>
#include <unistd.h>

__attribute__((noinline)) void vesper_tick(void) { __asm__ volatile(""); }

static void on_signal(int sig) {
  (void)sig;
  vesper_tick();
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGUSR1, &sa, 0);
  if (write(1, "ready\n", 6) != 6) return 1;
  for (;;) pause();
}
