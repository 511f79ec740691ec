import type { Migration } from 'kysely';
import * as m0001 from './0001-exchanges.js';

/**
 * Inline migrations (a bundled CLI has no migrations folder at run time). Names sort in order;
 * never rename or edit a released one — add a new file and list it here.
 */
export const migrations: Record<string, Migration> = {
  '0001-exchanges': m0001,
};
