"""The one rule for keeping a uid compactly: a UUID in its canonical text form (lower-case
hex, 36 characters with hyphens at 8-13-18-23, what the store makes) is kept as its 16 bytes;
any other uid is kept exactly as given. SQLite keeps the bytes in ``episodes.uid``; Chroma
keeps them in base64 as the vector's id."""


def canonical_bytes(uid: str) -> bytes | None:
    """The 16 bytes of ``uid`` when it is a UUID in canonical form, else None (upper case,
    braces, no hyphens... are not canonical: such uids are kept as they are, so each uid has
    exactly one stored form). Checked without ``uuid.UUID``, which cost about 3 us a uid."""
    if len(uid) != 36 or not uid[8] == uid[13] == uid[18] == uid[23] == "-":
        return None
    # With a hyphen at each of the four places, any other hyphen leaves fewer than 32 digits.
    hexed = uid.replace("-", "")
    try:
        raw = bytes.fromhex(hexed)
    except ValueError:
        return None
    # fromhex accepts upper case and skips spaces; the round trip admits only lower-case hex.
    return raw if len(raw) == 16 and raw.hex() == hexed else None


def uuid_text(raw: bytes) -> str:
    """The canonical text form of a UUID's 16 bytes (the inverse of :func:`canonical_bytes`)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
