import { type Kysely, type Migration, sql } from 'kysely';
import { OaiProxyError } from '../../errors.js';
import { VERSION } from '../../version.js';
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
import * as m0012 from './0012-search-embeddings-vectors.js';

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
  '0012-search-embeddings-vectors': m0012,
};

/**
 * Refuse a database that a newer oai-proxy migrated: it records migrations this version does not know
 * (Kysely's migrator would call it "corrupted"). A database no migration ran on yet passes. Throws
 * OaiProxyError('config_invalid') naming `label`, the newest unknown migration and what to do.
 */
export async function checkMigrationsKnown(db: Kysely<any>, label: string): Promise<void> {
  let names: string[];
  try {
    const { rows } = await sql<{ name: string }>`select name from kysely_migration`.execute(db);
    names = rows.map((r) => r.name);
  } catch {
    // No migration table yet (a new database), or an error the migrator itself will report.
    return;
  }
  const unknown = names.filter((name) => !Object.hasOwn(migrations, name)).sort();
  if (unknown.length === 0) return;
  const newest = unknown.at(-1);
  const more = unknown.length > 1 ? ` and ${unknown.length - 1} more` : '';
  throw new OaiProxyError(
    'config_invalid',
    `Database ${label} was written by a newer oai-proxy (it has migration ${newest}${more}, which oai-proxy ${VERSION} does not know); upgrade oai-proxy, or point --db / DATABASE_URL at another database`,
  );
}
