/**
 * Small fs helpers on integer fds (not FileHandle: FileHandle.close() waits for
 * pending reads, and closing a trace_pipe_raw fd is what wakes a blocked read on
 * recent kernels).
 */
import fs from "node:fs";
import { errnoOf } from "./errors.js";

export function openFd(path: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
}

export function closeFd(fd: number): Promise<void> {
  return new Promise((resolve) => fs.close(fd, () => resolve()));
}

/** Resolves after ms, or at once when the signal aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

export async function exists(path: string): Promise<boolean> {
  try {
    await fs.promises.access(path);
    return true;
  } catch {
    return false;
  }
}

export async function readText(path: string): Promise<string> {
  return fs.promises.readFile(path, "utf8");
}

export async function readTextOr(path: string, fallback: string): Promise<string> {
  try {
    return await readText(path);
  } catch {
    return fallback;
  }
}

/** One truncating write (open O_WRONLY|O_TRUNC, a single write()). */
export async function writeText(path: string, text: string): Promise<void> {
  const fh = await fs.promises.open(path, "w");
  try {
    await fh.write(text);
  } finally {
    await fh.close();
  }
}

/** One appending write (open O_WRONLY|O_APPEND, a single write()): kprobe_events must never be truncated. */
export async function appendText(path: string, text: string): Promise<void> {
  const fh = await fs.promises.open(path, fs.constants.O_WRONLY | fs.constants.O_APPEND);
  try {
    await fh.write(text);
  } finally {
    await fh.close();
  }
}

export function isErrno(err: unknown, ...codes: string[]): boolean {
  const c = errnoOf(err);
  return c !== undefined && codes.includes(c);
}
