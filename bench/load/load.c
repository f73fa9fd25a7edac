/*
 * Guest load generators, static and libc-free (a few KiB, pushed into the guest through its
 * console by the benchmarks; built on the host with gcc, there is no compiler in the guest).
 *
 *   load syscall N   N getppid() calls
 *   load fork N      N fork() + child _exit(0) + wait4()
 * Prints "ns=<elapsed CLOCK_MONOTONIC ns> n=<N>".
 */
typedef unsigned long u64;

static long sys6(long n, long a, long b, long c, long d) {
  long r;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
  return r;
}
#define SYS_write 1
#define SYS_getppid 110
#define SYS_fork 57
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_clock_gettime 228

struct ts { long s, ns; };
static u64 mono(void) {
  struct ts t;
  sys6(SYS_clock_gettime, 1, (long)&t, 0, 0);
  return (u64)t.s * 1000000000ul + (u64)t.ns;
}
static u64 atou(const char *s) { u64 v = 0; while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0'); return v; }
static int utoa(u64 v, char *out) {
  char tmp[24]; int n = 0, i = 0;
  do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (n) out[i++] = tmp[--n];
  return i;
}
static int streq(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return *a == *b; }

__attribute__((used)) void cmain(long *sp) {
  long argc = sp[0];
  char **argv = (char **)(sp + 1);
  if (argc < 3) sys6(SYS_exit, 2, 0, 0, 0);
  u64 n = atou(argv[2]);
  int fork_mode = streq(argv[1], "fork");
  u64 t0 = mono();
  for (u64 i = 0; i < n; i++) {
    if (fork_mode) {
      long pid = sys6(SYS_fork, 0, 0, 0, 0);
      if (pid == 0) sys6(SYS_exit, 0, 0, 0, 0);
      int st;
      sys6(SYS_wait4, pid, (long)&st, 0, 0);
    } else {
      sys6(SYS_getppid, 0, 0, 0, 0);
    }
  }
  u64 t1 = mono();
  char buf[64]; int k = 0;
  const char *a = "ns="; while (*a) buf[k++] = *a++;
  k += utoa(t1 - t0, buf + k);
  a = " n="; while (*a) buf[k++] = *a++;
  k += utoa(n, buf + k);
  buf[k++] = '\n';
  sys6(SYS_write, 1, (long)buf, k, 0);
  sys6(SYS_exit, 0, 0, 0, 0);
}
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call cmain\n hlt\n");
