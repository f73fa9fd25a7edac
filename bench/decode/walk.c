/*
 * The native reference for bench/decode: the listener's hot pass (PageDecoder.scan's
 * countRecords: header, length, bounds, event id and size of every record) written in C
 * and timed against memcpy of the same pages, in one process. It answers one question:
 * can any per-record pass reach half a copy on these pages, or is the goal out of reach
 * for the walk itself (each record's start depends on a load of the one before)?
 *
 *   walk INPUT SECONDS   -> one JSON line: copy and walk pages/s, events per round
 *
 * INPUT (written by run.ts): u32 pages, u32 dataOffset, u32 commitOffset, u32 typeHalf,
 * int32 minSizes[65536], then per page u32 length + the page's bytes (4-byte aligned).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMMIT_MASK 0x0fffffu
#define TYPE_PADDING 29

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Same checks as countRecords in page-decoder.ts; -1 on the first bad record. */
static long walk(const uint32_t *u32, uint32_t w, uint32_t endW, uint32_t typeHalf, const int32_t *minSizes) {
  const uint16_t *u16 = (const uint16_t *)u32;
  long events = 0;
  while (w < endW) {
    uint32_t hdr = u32[w], typeLen = hdr & 31;
    if (typeLen != 0 && typeLen <= 28) {
      uint32_t next = w + 1 + typeLen;
      if (next > endW) return -1;
      int32_t min = minSizes[u16[((w + 1) << 1) + typeHalf]];
      if (min < 0 || (uint32_t)min > typeLen << 2) return -1;
      events++;
      w = next;
      continue;
    }
    if (w + 2 > endW) return -1;
    uint32_t word = u32[w + 1];
    if (typeLen == 0) {
      if (word < 4 || (word & 3) != 0 || w + 1 + (word >> 2) > endW) return -1;
      int32_t min = minSizes[u16[((w + 2) << 1) + typeHalf]];
      if (min < 0 || (uint32_t)min > word - 4) return -1;
      events++;
      w += 1 + (word >> 2);
    } else if (typeLen == TYPE_PADDING) {
      if ((hdr >> 5) == 0) break;
      if (word < 4 || (word & 3) != 0 || w + 1 + (word >> 2) > endW) return -1;
      w += 1 + (word >> 2);
    } else {
      w += 2;
    }
  }
  return events;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: walk INPUT SECONDS\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  if (f == NULL) {
    perror(argv[1]);
    return 1;
  }
  uint32_t head[4];
  static int32_t minSizes[65536];
  if (fread(head, 4, 4, f) != 4 || fread(minSizes, 4, 65536, f) != 65536) {
    fprintf(stderr, "%s: short header\n", argv[1]);
    return 1;
  }
  uint32_t n = head[0], dataOffset = head[1], commitOffset = head[2], typeHalf = head[3];
  uint32_t **pages = calloc(n, sizeof *pages);
  uint32_t *lens = calloc(n, sizeof *lens);
  size_t maxLen = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (fread(&lens[i], 4, 1, f) != 1 || lens[i] > (1u << 20) || (lens[i] & 3) != 0) {
      fprintf(stderr, "%s: bad page %u\n", argv[1], i);
      return 1;
    }
    pages[i] = aligned_alloc(64, lens[i] == 0 ? 64 : (lens[i] + 63) & ~63u);
    if (fread(pages[i], 1, lens[i], f) != lens[i]) {
      fprintf(stderr, "%s: short page %u\n", argv[1], i);
      return 1;
    }
    if (lens[i] > maxLen) maxLen = lens[i];
  }
  fclose(f);
  double seconds = atof(argv[2]);
  uint8_t *target = aligned_alloc(64, (maxLen + 63) & ~(size_t)63);
  volatile long sink = 0;

  long eventsPerRound = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t end = dataOffset + (pages[i][commitOffset >> 2] & COMMIT_MASK);
    if (end > lens[i]) end = lens[i];
    eventsPerRound += walk(pages[i], dataOffset >> 2, end >> 2, typeHalf, minSizes);
  }

  double rate[2];
  for (int mode = 0; mode < 2; mode++) {
    long rounds = 0;
    double t0 = now_s(), t = t0, stop = t0 + 0.2; /* warm-up, then the timed part */
    for (int timed = 0; timed < 2; timed++) {
      if (timed) {
        rounds = 0;
        t0 = now_s();
        stop = t0 + seconds;
      }
      do {
        for (int k = 0; k < 50; k++, rounds++) {
          for (uint32_t i = 0; i < n; i++) {
            if (mode == 0) {
              memcpy(target, pages[i], lens[i]);
              __asm__ volatile("" : : "r"(target) : "memory"); /* the copy must happen */
            } else {
              uint32_t end = dataOffset + (pages[i][commitOffset >> 2] & COMMIT_MASK);
              if (end > lens[i]) end = lens[i];
              sink += walk(pages[i], dataOffset >> 2, end >> 2, typeHalf, minSizes);
            }
          }
        }
        t = now_s();
      } while (t < stop);
    }
    rate[mode] = (double)rounds * n / (t - t0);
  }
  printf("{\"copyPagesPerSec\":%.0f,\"walkPagesPerSec\":%.0f,\"eventsPerRound\":%ld}\n", rate[0], rate[1], eventsPerRound);
  return sink == -12345 ? 1 : 0;
}
