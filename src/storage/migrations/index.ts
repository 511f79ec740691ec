import type { Migration } from 'kysely';
import * as m0001 from './0001-exchanges.js';
import * as m0002 from './0002-logs.js';
import * as m0003 from './0003-model-registry.js';
import * as m0004 from './0004-vector-index.js';
import * as m0005 from './0005-search-function-planning.js';
import * as m0006 from './0006-stats-rollup.js';
import * as m0007 from './0007-search-index-automerge.js';
import * as m0008 from './0008-search-text-unescaped.js';
import * as m0009 from './0009-vector-index-target.js';
import * as m0010 from './0010-search-index-mark-follows-deletes.js';
import * as m0011 from './0011-search-stream-choices.js';

/**
 * Inline migrations (a bundled CLI has no migrations folder at run time). Names sort in order;
 * never rename or edit a released one — add a new file and list it here.
 */
export const migrations: Record<string, Migration> = {
  '0001-exchanges': m0001,
  '0002-logs': m0002,
  '0003-model-registry': m0003,
  '0004-vector-index': m0004,
  '0005-search-function-planning': m0005,
  '0006-stats-rollup': m0006,
  '0007-search-index-automerge': m0007,
  '0008-search-text-unescaped': m0008,
  '0009-vector-index-target': m0009,
  '0010-search-index-mark-follows-deletes': m0010,
  '0011-search-stream-choices': m0011,
};
