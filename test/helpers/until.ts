/**
 * Poll `check` every `everyMs` until it returns a truthy value, and return that value. After `timeoutMs`,
 * fail with `what` (what the test was waiting for) in the message.
 */
export async function until<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 8000,
  everyMs = 20,
): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
