/**
 * A header (or query parameter) name whose value is a secret: one naming a key, token, secret, auth,
 * password, signature or cookie, in any case. The proxy's isSecretHeaderName (proxy/capture.ts), restated
 * because config may not import proxy/: what a recorded exchange hides, config's messages hide too.
 */
export function isSecretName(name: string): boolean {
  return /key|token|secret|auth|password|signature|cookie/i.test(name);
}

/**
 * A value shaped like an API key (`sk-…`, or one unbroken run of 32+ letters, digits, `-` and `_`), where no
 * name says it is one: a key pasted into the wrong setting, or into a URL's query (`?code=sk-…`).
 */
export function isKeyShaped(value: string): boolean {
  return /^(?:sk-[\w-]{8,}|[\w-]{32,})$/.test(value.trim());
}
