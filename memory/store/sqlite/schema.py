"""The SQLite schema, as numbered migrations applied on open (each in one transaction).

Never edit a released migration: add the next number. A folder written by an older
ChannelMind opens and migrates; a folder from a newer one is refused with one line.

The index queue is ``episodes.indexed`` (0 waiting for its vector, 1 in the vector index, 2
set aside). Claims and their leases live in the process that owns the folder (see
:mod:`memory.store.sqlite.store`), so the file is the one every earlier version wrote.
"""

from __future__ import annotations

#: ``episodes.indexed``.
PENDING, INDEXED, SET_ASIDE = 0, 1, 2

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE episodes (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            org_id TEXT NOT NULL,
            project_id TEXT NOT NULL,
            producer TEXT NOT NULL,
            produced_for TEXT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            platform TEXT NOT NULL,
            source_id TEXT NOT NULL,
            thread_id TEXT,
            episode_type TEXT NOT NULL,
            metadata TEXT NOT NULL,
            fts_tags TEXT NOT NULL,
            indexed INTEGER NOT NULL DEFAULT 0,
            edited_at REAL,
            UNIQUE (org_id, project_id, platform, source_id)
        )""",
        "CREATE INDEX ep_channel ON episodes (org_id, project_id, produced_for, created_at)",
        "CREATE INDEX ep_producer ON episodes (org_id, project_id, producer, created_at)",
        "CREATE INDEX ep_time ON episodes (org_id, project_id, created_at)",
        "CREATE INDEX ep_thread ON episodes (org_id, project_id, produced_for, thread_id,"
        " created_at) WHERE thread_id IS NOT NULL",
        "CREATE INDEX ep_pending ON episodes (indexed) WHERE indexed = 0",
        """CREATE VIRTUAL TABLE episodes_fts USING fts5(
            content, fts_tags, content='episodes', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER episodes_ai AFTER INSERT ON episodes BEGIN
            INSERT INTO episodes_fts(rowid, content, fts_tags)
            VALUES (new.id, new.content, new.fts_tags);
        END""",
        """CREATE TRIGGER episodes_ad AFTER DELETE ON episodes BEGIN
            INSERT INTO episodes_fts(episodes_fts, rowid, content, fts_tags)
            VALUES ('delete', old.id, old.content, old.fts_tags);
        END""",
        """CREATE TRIGGER episodes_au AFTER UPDATE OF content, fts_tags ON episodes BEGIN
            INSERT INTO episodes_fts(episodes_fts, rowid, content, fts_tags)
            VALUES ('delete', old.id, old.content, old.fts_tags);
            INSERT INTO episodes_fts(rowid, content, fts_tags)
            VALUES (new.id, new.content, new.fts_tags);
        END""",
        # Vectors whose rows are gone, to be dropped from the vector index. Written in the
        # same transaction as the delete, so a crash in between cannot orphan a vector.
        """CREATE TABLE vector_tombstones (
            uid TEXT NOT NULL, org_id TEXT NOT NULL, project_id TEXT NOT NULL,
            produced_for TEXT NOT NULL)""",
        """CREATE TABLE facts (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            org_id TEXT NOT NULL,
            project_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            produced_for TEXT NOT NULL,
            category TEXT NOT NULL,
            tag TEXT NOT NULL,
            feature TEXT NOT NULL,
            value TEXT NOT NULL,
            created_at REAL NOT NULL,
            superseded_at REAL,
            superseded_by TEXT,
            metadata TEXT NOT NULL
        )""",
        "CREATE INDEX facts_subject ON facts (org_id, project_id, subject, produced_for)",
        """CREATE TABLE fact_citations (
            fact_uid TEXT NOT NULL REFERENCES facts(uid) ON DELETE CASCADE,
            episode_uid TEXT NOT NULL,
            PRIMARY KEY (fact_uid, episode_uid))""",
        "CREATE INDEX fact_citations_episode ON fact_citations (episode_uid)",
        """CREATE TABLE projects (
            org_id TEXT NOT NULL, project_id TEXT NOT NULL, description TEXT NOT NULL,
            config TEXT NOT NULL, created_at REAL NOT NULL,
            PRIMARY KEY (org_id, project_id))""",
        """CREATE TABLE settings (
            org_id TEXT NOT NULL, project_id TEXT NOT NULL, subject TEXT NOT NULL,
            key TEXT NOT NULL, value TEXT NOT NULL,
            PRIMARY KEY (org_id, project_id, subject, key))""",
    ],
    2: [
        # claim() takes rows channel by channel; this lets it read them in that order
        # instead of sorting every pending row on each batch (a bulk load of 1M rows).
        "CREATE INDEX ep_pending_channel ON episodes (org_id, project_id, produced_for, id)"
        " WHERE indexed = 0",
        "DROP INDEX ep_pending",
    ],
    3: [
        # Records set aside: stored but unreadable (e.g. a time written before the valid range
        # was enforced) or unembeddable. They are skipped, counted, logged once, and deletable;
        # an episode set aside is also marked set aside in the index queue.
        """CREATE TABLE set_aside (
            uid TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)""",
    ],
    4: [
        # The channel, producer and thread indexes lead with their own column instead of
        # repeating the org and project before it: 14 bytes less per entry for a 7-character
        # org and a 5-character project (more with longer ids), about 40 bytes per message
        # over the three. The row's org and project are still checked, from the row: a
        # channel and a thread belong to one project, so an index entry of another project is
        # read only when two projects share a channel id (or a producer id, e.g. one user in
        # several projects of one workspace). The queries keep the planner on these indexes
        # with a unary ``+`` on the columns an index does not lead with (scope_sql). An old
        # folder gets them on open: each is built in one pass over the table (seconds at a
        # million rows), and the old indexes' pages are reused.
        "DROP INDEX ep_channel",
        "CREATE INDEX ep_channel ON episodes (produced_for, created_at)",
        "DROP INDEX ep_producer",
        "CREATE INDEX ep_producer ON episodes (producer, created_at)",
        "DROP INDEX ep_thread",
        "CREATE INDEX ep_thread ON episodes (thread_id, created_at) WHERE thread_id IS NOT NULL",
    ],
    5: [
        # A row's scope tokens are no longer stored in it (about 38 bytes per message): a new
        # row's ``fts_tags`` is empty, and the store writes the full-text index itself, with
        # the tokens it computes from the row's ids (store.row_tags). The triggers could only
        # copy the column. Rows written before keep their tokens in the column, and the store
        # deletes them from the index with those. Nothing else changes: the FTS table reads
        # no column of ``episodes`` for a search (bm25 reads its own sizes table).
        "DROP TRIGGER episodes_ai",
        "DROP TRIGGER episodes_ad",
        "DROP TRIGGER episodes_au",
    ],
    6: [
        # A uid that is a canonical UUID (every uid the store makes) is kept as its 16 bytes
        # (store.uid_key), not 36 characters: about 20 bytes in the row and 22 in the uid
        # index per message. Any other uid stays text; the column's TEXT affinity keeps a
        # blob a blob. ``cm_uid_key`` is store.uid_key, registered on the migrating
        # connection. Tombstones, set-aside records and citations keep text uids.
        "UPDATE episodes SET uid = cm_uid_key(uid) WHERE typeof(uid) = 'text'",
    ],
    7: [
        # A row names its org and project by a small integer key into ``scopes`` instead of
        # repeating both ids, in the row and in the source and time indexes (about 40 bytes
        # per message for a 7-character org and a 5-character project; more with longer
        # ids). Queries name the project as ``project_key = (SELECT key FROM scopes WHERE
        # org_id = ? AND project_id = ?)``, which SQLite evaluates once and looks up in the
        # index. The table is rebuilt (rows keep their ``id``, so the full-text index, keyed
        # by it, stays as it is); a project's key goes when the project is deleted.
        """CREATE TABLE scopes (
            key INTEGER PRIMARY KEY, org_id TEXT NOT NULL, project_id TEXT NOT NULL,
            UNIQUE (org_id, project_id))""",
        "INSERT INTO scopes (org_id, project_id)"
        " SELECT DISTINCT org_id, project_id FROM episodes ORDER BY org_id, project_id",
        """CREATE TABLE episodes_7 (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            project_key INTEGER NOT NULL,
            producer TEXT NOT NULL,
            produced_for TEXT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            platform TEXT NOT NULL,
            source_id TEXT NOT NULL,
            thread_id TEXT,
            episode_type TEXT NOT NULL,
            metadata TEXT NOT NULL,
            fts_tags TEXT NOT NULL,
            indexed INTEGER NOT NULL DEFAULT 0,
            edited_at REAL,
            UNIQUE (project_key, platform, source_id)
        )""",
        "INSERT INTO episodes_7 SELECT e.id, e.uid, s.key, e.producer, e.produced_for, e.role,"
        " e.content, e.created_at, e.platform, e.source_id, e.thread_id, e.episode_type,"
        " e.metadata, e.fts_tags, e.indexed, e.edited_at FROM episodes e JOIN scopes s"
        " ON s.org_id = e.org_id AND s.project_id = e.project_id ORDER BY e.id",
        "DROP TABLE episodes",
        "ALTER TABLE episodes_7 RENAME TO episodes",
        "CREATE INDEX ep_time ON episodes (project_key, created_at)",
        "CREATE INDEX ep_channel ON episodes (produced_for, created_at)",
        "CREATE INDEX ep_producer ON episodes (producer, created_at)",
        "CREATE INDEX ep_thread ON episodes (thread_id, created_at) WHERE thread_id IS NOT NULL",
        "CREATE INDEX ep_pending_channel ON episodes (project_key, produced_for, id)"
        " WHERE indexed = 0",
    ],
    8: [
        # The channel index holds each row's project key after its channel: a search reads
        # every candidate's neighbours in its channel (two lookups a row, see
        # store.adjacent_sql), and with the key in the index they are answered from the
        # index alone, instead of reading each neighbour's row to check its project (a
        # 120-row read of candidates at 200k messages: 3.1 -> 2.4 ms). A channel listing
        # walks the channel's rows of one project in time order. About 2 bytes per message
        # (the key is a small integer); built in one pass over the table on open.
        "DROP INDEX ep_channel",
        "CREATE INDEX ep_channel ON episodes (produced_for, project_key, created_at)",
    ],
}

#: What an upgrade to each version changed, for the one log line a folder written by an
#: earlier version gets when it is opened.
UPGRADES: dict[int, str] = {
    4: "channel, producer and thread indexes rebuilt",
    5: "new rows' scope tokens kept in the full-text index only",
    6: "uids kept as 16 bytes",
    7: "rows name their org and project by a key (the table rebuilt)",
    8: "channel index rebuilt with each row's project",
}

SCHEMA_VERSION = max(MIGRATIONS)
