"""The PostgreSQL schema, as numbered migrations.

``open`` applies the migrations above the stored version, each in its own transaction under
an advisory lock, so that several processes starting at once migrate exactly once. Never edit
a released migration: add the next number.

Choices that differ from SQLite's schema, and why:

* ``tsv`` is a generated column: the content's words (text search configuration
  ``channelmind``: English stemming with accents removed, like SQLite's ``porter unicode61
  remove_diacritics 2``) plus the row's scope tokens (project, channel, producer, thread; the
  same tokens SQLite puts in ``fts_tags``). One GIN index on it answers "these words, inside
  this channel" as one index search: the channel's token is a required term of the query.
  (Not the project's token: a search of a whole project matches the words alone, and its
  WHERE keeps the project; see ``PostgresStore._words_alone``.)
  Only the first 100,000 characters of a message are indexed (a tsvector holds at most 1 MB).
* The embedding queue is explicit: ``index_state`` (0 pending, 1 indexed, 2 set aside),
  a ``version`` bumped by every edit, and a lease (``lease_token``, ``lease_until`` in the
  database's clock, ``attempts``) so that several processes claim rows without overlap.
* Times are ``double precision`` epoch seconds, as in SQLite, so values round-trip exactly
  and a ``created_at`` filter or time range means the same on both stores.
* ``metadata`` and project ``config`` are ``jsonb``.
"""

from __future__ import annotations

#: Advisory lock key that serialises migrations across processes ("chanmind" in ASCII).
MIGRATION_LOCK = 0x6368616E6D696E64
FTS_CONFIG = "channelmind"
#: Characters of a message that go into the full-text index.
FTS_CHARS = 100_000

MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS cm_meta (key text PRIMARY KEY, value text NOT NULL)",
        "CREATE EXTENSION IF NOT EXISTS unaccent",
        f"CREATE TEXT SEARCH CONFIGURATION {FTS_CONFIG} (COPY = pg_catalog.english)",
        f"ALTER TEXT SEARCH CONFIGURATION {FTS_CONFIG}"
        " ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem",
        f"""CREATE TABLE episodes (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            uid text NOT NULL UNIQUE,
            org_id text NOT NULL,
            project_id text NOT NULL,
            producer text NOT NULL,
            produced_for text NOT NULL,
            role text NOT NULL,
            content text NOT NULL,
            created_at double precision NOT NULL,
            platform text NOT NULL,
            source_id text NOT NULL,
            thread_id text,
            episode_type text NOT NULL,
            metadata jsonb NOT NULL,
            edited_at double precision,
            scope_tags text[] NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (
                to_tsvector('{FTS_CONFIG}', left(content, {FTS_CHARS}))
                || array_to_tsvector(scope_tags)) STORED,
            index_state smallint NOT NULL DEFAULT 0,
            version integer NOT NULL DEFAULT 0,
            lease_token uuid,
            lease_until double precision,
            attempts smallint NOT NULL DEFAULT 0,
            UNIQUE (org_id, project_id, platform, source_id)
        )""",
        "CREATE INDEX ep_channel ON episodes (org_id, project_id, produced_for, created_at, id)",
        "CREATE INDEX ep_producer ON episodes (org_id, project_id, producer, created_at)",
        "CREATE INDEX ep_time ON episodes (org_id, project_id, created_at, id)",
        "CREATE INDEX ep_thread ON episodes (org_id, project_id, produced_for, thread_id,"
        " created_at, id) WHERE thread_id IS NOT NULL",
        "CREATE INDEX ep_pending ON episodes (org_id, project_id, produced_for, id)"
        " WHERE index_state = 0",
        "CREATE INDEX ep_fts ON episodes USING gin (tsv)",
        """CREATE TABLE vector_tombstones (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            uid text NOT NULL, org_id text NOT NULL, project_id text NOT NULL,
            produced_for text NOT NULL)""",
        """CREATE TABLE facts (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            uid text NOT NULL UNIQUE,
            org_id text NOT NULL,
            project_id text NOT NULL,
            subject text NOT NULL,
            produced_for text NOT NULL,
            category text NOT NULL,
            tag text NOT NULL,
            feature text NOT NULL,
            value text NOT NULL,
            created_at double precision NOT NULL,
            superseded_at double precision,
            superseded_by text,
            metadata jsonb NOT NULL
        )""",
        "CREATE INDEX facts_subject ON facts (org_id, project_id, subject, produced_for)",
        """CREATE TABLE fact_citations (
            fact_uid text NOT NULL REFERENCES facts(uid) ON DELETE CASCADE,
            episode_uid text NOT NULL,
            position integer NOT NULL,
            PRIMARY KEY (fact_uid, episode_uid))""",
        "CREATE INDEX fact_citations_episode ON fact_citations (episode_uid)",
        """CREATE TABLE projects (
            org_id text NOT NULL, project_id text NOT NULL, description text NOT NULL,
            config jsonb NOT NULL, created_at double precision NOT NULL,
            PRIMARY KEY (org_id, project_id))""",
        """CREATE TABLE settings (
            org_id text NOT NULL, project_id text NOT NULL, subject text NOT NULL,
            key text NOT NULL, value text NOT NULL,
            PRIMARY KEY (org_id, project_id, subject, key))""",
    ],
    2: [
        # Records set aside (as in the SQLite store): unreadable or unembeddable, counted,
        # logged once, skipped by the index queue, deletable.
        """CREATE TABLE set_aside (
            uid text PRIMARY KEY, kind text NOT NULL, reason text NOT NULL,
            at double precision NOT NULL)""",
    ],
}

SCHEMA_VERSION = max(MIGRATIONS)
