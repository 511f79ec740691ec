// cli-table3 ships no types for its helpers module.
declare module 'cli-table3/src/utils.js' {
  /** The display width of `text` (its widest line): wide CJK and emoji count 2, colour codes 0. */
  export function strlen(text: string): number;
}
