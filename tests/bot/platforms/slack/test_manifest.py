"""manifest.yml is a valid Slack app manifest that declares what the Slack adapter uses: its
slash commands, its shortcut, the events it listens to, and a scope for every API method it
calls (and no scope it does not need)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from slack_bolt.async_app import AsyncApp

from bot.platforms.slack.adapter import FORGET_SHORTCUT, SlackAdapter
from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[4]
ADAPTER_SOURCES = sorted((ROOT / "bot" / "platforms" / "slack").glob("*.py"))

#: Web API method -> the bot scopes it needs (None: the bot token alone is enough; a tuple:
#: one per kind of channel the bot reads, public and private).
METHOD_SCOPES: dict[str, str | tuple[str, ...] | None] = {
    "auth.test": None,
    "chat.postMessage": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.update": "chat:write",
    "chat.getPermalink": None,
    "users.info": "users:read",
    "reactions.add": "reactions:write",
    "reactions.remove": "reactions:write",
    "conversations.info": "channels:read",  # and groups:read, im:read, mpim:read
    # the history backfill reads public and private channels (never DMs: it saw them all)
    "users.conversations": ("channels:read", "groups:read"),
    "conversations.history": ("channels:history", "groups:history"),
    "conversations.replies": ("channels:history", "groups:history"),
}
#: Subscribed event -> the scope it needs.
EVENT_SCOPES = {
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
    "message.mpim": "mpim:history",
    "member_joined_channel": ("channels:read", "groups:read"),  # the bot added to a channel
}


def scopes_of(needed: str | tuple[str, ...] | None) -> set[str]:
    if needed is None:
        return set()
    return {needed} if isinstance(needed, str) else set(needed)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "manifest.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """What a new SlackAdapter registers with bolt: commands, shortcuts and events."""
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, list[Any]] = {"command": [], "shortcut": [], "event": []}
    for kind in seen:
        original = getattr(AsyncApp, kind)

        def spy(
            app: AsyncApp,
            what: Any,
            *args: Any,
            _kind: str = kind,
            _f: Any = original,
            **kwargs: Any,
        ) -> Any:
            seen[_kind].append(what)
            return _f(app, what, *args, **kwargs)

        monkeypatch.setattr(AsyncApp, kind, spy)
    settings = Settings(_env_file=None, slack_bot_token="xoxb-test", slack_app_token="xapp-1-t")
    SlackAdapter(object(), settings)  # type: ignore[arg-type]  # no core needed to register
    return seen


def methods_called() -> set[str]:
    """Every Web API method the adapter's source calls on a client (``client.chat_postMessage``
    -> ``chat.postMessage``)."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in ADAPTER_SOURCES)
    names = set(re.findall(r"\bclient\.([a-z]+_[A-Za-z_]+)\b", source))
    return {name.replace("_", ".", 1).replace("_", ".") for name in names}


def test_manifest_is_well_formed(manifest: dict[str, Any]) -> None:
    info = manifest["display_information"]
    assert 0 < len(info["name"]) <= 35 and len(info["description"]) <= 140
    assert 174 <= len(info["long_description"]) <= 4000
    features = manifest["features"]
    bot_user = features["bot_user"]
    assert re.fullmatch(r"[a-z0-9._-]{1,80}", bot_user["display_name"])
    assert features["app_home"]["messages_tab_enabled"] is True  # people can DM the bot
    assert features["app_home"]["messages_tab_read_only_enabled"] is False
    for command in features["slash_commands"]:
        assert command["command"].startswith("/") and len(command["command"]) <= 32
        assert command["description"] and command["usage_hint"]
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert "request_url" not in settings["event_subscriptions"]  # Socket Mode


def test_every_registered_command_and_shortcut_is_declared(
    manifest: dict[str, Any], registered: dict[str, list[Any]]
) -> None:
    commands = set(registered["command"])
    assert commands == {"/recall", "/forget", "/remember", "/memory"}
    declared = {c["command"] for c in manifest["features"]["slash_commands"]}
    assert commands == declared
    assert registered["shortcut"] == [FORGET_SHORTCUT]
    (shortcut,) = manifest["features"]["shortcuts"]
    assert (shortcut["type"], shortcut["callback_id"]) == ("message", FORGET_SHORTCUT)
    assert shortcut["name"] == "Forget this message"
    # message.* (one "message" listener for every subtype) and app_mention are subscribed.
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"message", "app_mention"} <= set(registered["event"])
    assert {e.split(".")[0] for e in events} == {"message", "app_mention", "member_joined_channel"}
    assert "member_joined_channel" in registered["event"]


def test_scopes_cover_exactly_the_methods_and_events_used(manifest: dict[str, Any]) -> None:
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert events == set(EVENT_SCOPES)

    called = methods_called()
    assert {"chat.postMessage", "users.info", "reactions.add", "chat.getPermalink"} <= called
    unknown = called - set(METHOD_SCOPES)
    assert not unknown, f"add these methods to METHOD_SCOPES: {unknown}"
    assert {"conversations.history", "conversations.replies", "users.conversations"} <= called
    needed = set().union(*(scopes_of(METHOD_SCOPES[m]) for m in called))
    needed |= set().union(*(scopes_of(s) for s in EVENT_SCOPES.values()))
    needed.add("commands")  # slash commands and the shortcut
    missing = needed - scopes
    assert not missing, f"manifest.yml lacks {missing}"
    extra = scopes - needed
    assert not extra, f"manifest.yml asks for scopes nothing uses: {extra}"
