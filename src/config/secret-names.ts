/**
 * A header (or query parameter) name whose value is a secret: one naming a key, token, secret, auth,
 * password, signature or cookie, in any case. The proxy's isSecretHeaderName (proxy/capture.ts), restated
 * because config may not import proxy/: what a recorded exchange hides, config's messages hide too.
 */
export function isSecretName(name: string): boolean {
  return /key|token|secret|auth|password|signature|cookie/i.test(name);
}
