import Database from 'better-sqlite3';

/**
 * Make every INSERT into `exchanges` of the SQLite file at `path` fail with SQLite's disk-full message,
 * for every connection (a trigger, made from a connection of its own), until `free()`. SQLite's
 * `max_page_count` would be a real full disk, but it limits one connection only, and `serve` records on
 * the recorder thread's connection.
 */
export function fillDisk(path: string): { free(): void } {
  const db = new Database(path);
  db.exec(`create trigger test_disk_full before insert on exchanges
    begin select raise(abort, 'database or disk is full'); end`);
  return {
    free() {
      db.exec('drop trigger test_disk_full');
      db.close();
    },
  };
}
