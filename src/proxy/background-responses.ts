/**
 * Background Responses (`POST /responses` with `background: true`): the create answers at once, `queued`,
 * without usage; the tokens arrive with the response once it is done, which the client reads later
 * (`GET /responses/{id}`, as JSON or replayed as a stream, or the answer to its cancel). Those reads count
 * no tokens for any other response (their usage was counted when it was generated), so the proxy remembers
 * the background responses it saw created and counts the usage of the first read that carries it.
 *
 * The memory is the process's: a read through another proxy sharing the store, or after a restart, does
 * not count the tokens (a pending id is kept until its usage is read, the oldest dropped beyond `max`).
 */

/** What the row of the read that counts the tokens takes from the create. */
export interface PendingResponse {
  model: string | null;
  upstreamModel: string | null;
  /** The create's `user` field: `logs stats --by user` puts the tokens where the create was. */
  user: string | null;
}

/** `/responses` itself: a create (Azure's `/openai/responses` and `/openai/v1/responses` too). */
const RESPONSES_CREATE = /^(?:\/openai(?:\/v1)?)?\/responses$/;
/** A stored response or its cancel, with its id. */
const RESPONSE_OBJECT = /^(?:\/openai(?:\/v1)?)?\/responses\/([^/]+)(?:\/cancel)?$/;
/** A stream's `response.created` event: the response object begins with its id. */
const STREAMED_RESPONSE_ID = /"response"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]+)"/;
/** How far into a streamed body the `response.created` event is looked for. */
const STREAM_HEAD_CHARS = 16_384;

export class BackgroundResponses {
  private readonly pending = new Map<string, PendingResponse>();

  constructor(private readonly max = 10_000) {}

  get size(): number {
    return this.pending.size;
  }

  /**
   * After a create: remember the response when the request asked for `background` and the answer carries no
   * usage (a JSON `queued`/`in_progress` response, or a stream cut before its end). `body` is the stored
   * response body.
   */
  created(
    rest: string,
    requestJson: Record<string, unknown> | null,
    body: string | null,
    entry: PendingResponse,
  ): void {
    if (requestJson?.background !== true || body === null || !RESPONSES_CREATE.test(rest)) return;
    const id = responseId(body);
    if (id === null) return;
    if (this.pending.size >= this.max) {
      const oldest = this.pending.keys().next().value;
      if (oldest !== undefined) this.pending.delete(oldest);
    }
    this.pending.set(id, entry);
  }

  /** The id of a pending response `rest` reads or cancels; null for any other path. */
  pendingId(rest: string): string | null {
    if (this.pending.size === 0) return null;
    const id = RESPONSE_OBJECT.exec(rest)?.[1];
    return id !== undefined && this.pending.has(id) ? id : null;
  }

  /** Its usage has been read: forget it, returning what the create left for the row. */
  settle(id: string): PendingResponse | undefined {
    const entry = this.pending.get(id);
    this.pending.delete(id);
    return entry;
  }
}

/** A created response's id: from a JSON response object, or from a stream's `response.created` event. */
function responseId(body: string): string | null {
  if (body.startsWith('{')) {
    try {
      const obj = JSON.parse(body) as { id?: unknown; object?: unknown };
      return typeof obj.id === 'string' && obj.object === 'response' ? obj.id : null;
    } catch {
      // a JSON body cut at CAPTURE_BODY_BYTES: read its head as a stream's
    }
  }
  return (
    STREAMED_RESPONSE_ID.exec(body.slice(0, STREAM_HEAD_CHARS))?.[1] ??
    /^\{\s*"id"\s*:\s*"([^"\\]+)"/.exec(body)?.[1] ??
    null
  );
}
