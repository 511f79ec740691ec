import { type Kysely, PostgresAdapter } from 'kysely';

/** True when a migration runs on PostgreSQL (migrations branch on the dialect only where SQL must differ). */
export function isPostgres(db: Kysely<any>): boolean {
  return db.getExecutor().adapter instanceof PostgresAdapter;
}
