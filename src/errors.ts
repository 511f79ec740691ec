/** Stable error codes. Branch on `code`, never on message text. */
export type ErrorCode =
  | 'config_invalid'
  | 'config_not_found'
  | 'usage'
  | 'database_error'
  | 'database_not_found'
  | 'database_unavailable'
  | 'not_found'
  | 'conflict'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'upstream_reset'
  | 'body_too_large'
  | 'invalid_request'
  | 'model_not_found'
  | 'unauthorized'
  | 'vector_disabled'
  | 'vector_error'
  /** A stop signal arrived during start-up: what was opened is closed again (exit 0). */
  | 'start_stopped'
  | 'internal';

/** Exit codes the CLI maps errors to: 2 for bad input/usage, 1 for runtime failures. */
const USAGE_CODES: ReadonlySet<ErrorCode> = new Set([
  'config_invalid',
  'config_not_found',
  'usage',
  'vector_disabled',
]);

/** The one error class of oai-proxy: a stable `code`, an HTTP `status`, a message that says what to do. */
export class OaiProxyError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, message: string, options: { status?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'OaiProxyError';
    this.code = code;
    this.status = options.status ?? 500;
  }

  /** Process exit code for this error when it reaches the CLI. */
  get exitCode(): number {
    return USAGE_CODES.has(this.code) ? 2 : 1;
  }
}

/** True when `err` is an OaiProxyError, optionally with the given code. */
export function isOaiProxyError(err: unknown, code?: ErrorCode): err is OaiProxyError {
  return err instanceof OaiProxyError && (code === undefined || err.code === code);
}

/** An OpenAI-shaped error body: `{ error: { message, type, param, code } }`. */
export function openAiErrorBody(
  message: string,
  type: string,
  code: string | null,
  param: string | null = null,
): string {
  return JSON.stringify({ error: { message, type, param, code } });
}
