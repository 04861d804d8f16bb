"""Synthetic platform exports, built by the tests: a Slack workspace export (zip or folder) and
DiscordChatExporter files, with the shapes the real exporters write."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TEAM = "T0EXPORT1"
BOT_USER, BOT_ID = "U0CMBOT01", "B0CMBOT01"
ALICE, BOB, CAROL = "U0ALICE01", "U0BOB0001", "U0CAROL01"
GENERAL, RANDOM, SECRET, DM = "C0GENERAL", "C0RANDOM1", "G0SECRET1", "D0ALICE01"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)


def ts(when: datetime, n: int = 0) -> str:
    return f"{int(when.timestamp())}.{n:06d}"


@dataclass
class SlackExportBuilder:
    """Conversations -> day -> messages; written as Slack writes an export."""

    team: str | None = TEAM
    days: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    broken: dict[str, bytes] = field(default_factory=dict)  # extra files, raw bytes

    def say(self, folder: str, when: datetime, **message: Any) -> dict[str, Any]:
        message.setdefault("type", "message")
        if self.team and "team" not in message and message.get("user"):
            message["team"] = self.team
        self.days.setdefault(folder, {}).setdefault(f"{when:%Y-%m-%d}", []).append(message)
        return message

    def files(self) -> dict[str, bytes]:
        users = [
            {
                "id": ALICE,
                "name": "alice",
                "real_name": "Alice Liddell",
                "profile": {"display_name": "Alice", "real_name": "Alice Liddell"},
            },
            {"id": BOB, "name": "bob", "profile": {"display_name": "", "real_name": "Bob Stone"}},
            {"id": CAROL, "name": "carol", "profile": {"display_name": "Carol"}},
            {
                "id": BOT_USER,
                "name": "channelmind",
                "is_bot": True,
                "profile": {"display_name": "channelmind", "bot_id": BOT_ID},
            },
        ]
        out = {
            "users.json": json.dumps(users).encode(),
            "channels.json": json.dumps(
                [{"id": GENERAL, "name": "general"}, {"id": RANDOM, "name": "random"}]
            ).encode(),
            "groups.json": json.dumps([{"id": SECRET, "name": "secret"}]).encode(),
            "dms.json": json.dumps([{"id": DM, "members": [ALICE, BOT_USER]}]).encode(),
        }
        for folder, days in self.days.items():
            for day, messages in days.items():
                out[f"{folder}/{day}.json"] = json.dumps(messages).encode()
        out.update(self.broken)
        return out

    def zip(self, path: Path) -> Path:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in self.files().items():
                z.writestr(name, data)
        return path

    def folder(self, path: Path) -> Path:
        for name, data in self.files().items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path


def dce_file(
    path: Path,
    *,
    guild: tuple[str, str],
    channel: dict[str, Any],
    messages: list[dict[str, Any]],
) -> Path:
    data = {
        "guild": {"id": guild[0], "name": guild[1], "iconUrl": ""},
        "channel": {"categoryId": None, "category": None, "topic": None, **channel},
        "dateRange": {"after": None, "before": None},
        "exportedAt": datetime.now(UTC).isoformat(),
        "messages": messages,
        "messageCount": len(messages),
    }
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def dce_user(uid: str, name: str, nickname: str | None = None, bot: bool = False) -> dict[str, Any]:
    return {
        "id": uid,
        "name": name,
        "discriminator": "0000",
        "nickname": nickname or name,
        "color": None,
        "isBot": bot,
        "roles": [],
        "avatarUrl": "",
    }


def dce_message(
    mid: str, when: datetime, author: dict[str, Any], content: str, **extra: Any
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "Default",
        "timestamp": when.isoformat(),
        "timestampEdited": None,
        "callEndedTimestamp": None,
        "isPinned": False,
        "content": content,
        "author": author,
        "attachments": [],
        "embeds": [],
        "stickers": [],
        "reactions": [],
        "mentions": [],
        **extra,
    }
