"""Keyed tokens for the ids that settings rows outlive a forget with.

Some settings must survive forgetting: the mark that keeps a forgotten channel's history from
being read again, and a person's choice not to be remembered. Forgetting must leave no id on
disk, so those rows are keyed by a token instead: a BLAKE2b hash of the qualified id under a
random key kept once per org and project in the settings (as memory keys Chroma's names).
Whoever holds the id can find the row; the disk alone does not name anyone.
"""

from __future__ import annotations

import hashlib
import secrets

from memory.protocol import Memory

#: Where the key of the tokens is kept (settings subject and key).
TOKEN_KEY_SUBJECT, TOKEN_KEY = "channelmind", "channel-token-key"


async def token(memory: Memory, project: str, org: str, kind: str, qualified_id: str) -> str:
    """The settings subject standing for ``qualified_id``: ``<kind>:`` and a keyed hash
    (the key is made on first use)."""
    key = await memory.get_setting(org, project, TOKEN_KEY_SUBJECT, TOKEN_KEY)
    if key is None:
        await memory.set_setting(org, project, TOKEN_KEY_SUBJECT, TOKEN_KEY, secrets.token_hex(32))
        key = await memory.get_setting(org, project, TOKEN_KEY_SUBJECT, TOKEN_KEY)
        assert key is not None
    digest = hashlib.blake2b(qualified_id.encode(), key=bytes.fromhex(key), digest_size=16)
    return f"{kind}:{digest.hexdigest()}"


async def read_keyed(
    memory: Memory, project: str, org: str, kind: str, qualified_id: str, key: str
) -> str | None:
    """The setting ``key`` of ``qualified_id``, stored under its token. A row from before
    tokens, under the raw id, still counts: it is moved under the token when first read."""
    subject = await token(memory, project, org, kind, qualified_id)
    value = await memory.get_setting(org, project, subject, key)
    if value is None:
        value = await memory.get_setting(org, project, qualified_id, key)
        if value is not None:
            await memory.set_setting(org, project, subject, key, value)
            await memory.set_setting(org, project, qualified_id, key, None)
    return value


async def write_keyed(
    memory: Memory,
    project: str,
    org: str,
    kind: str,
    qualified_id: str,
    key: str,
    value: str | None,
) -> None:
    """Set (or with ``None`` clear) the setting under the token; a row from before tokens
    would name the id (and answer for it), so it goes."""
    subject = await token(memory, project, org, kind, qualified_id)
    await memory.set_setting(org, project, subject, key, value)
    await memory.set_setting(org, project, qualified_id, key, None)
