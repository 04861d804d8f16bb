"""``/recall``, ``/forget``, ``/remember`` and ``/memory``, written once for every platform.

Every answer goes to the person who asked only (``Replier.ephemeral``). What a command may
touch follows the privacy rules: ``/recall`` reads this channel; ``/forget <message>`` deletes
only a message the asker wrote; ``/forget channel`` needs a channel admin: the platform's own
admin flag, or a qualified id listed in ``CHANNELMIND_ADMINS``, or (in a DM) the user, its
owner; every forget reports what it deleted, counted.
"""

from __future__ import annotations

import hashlib
import logging
import re

from bot.platforms.base import MessageRef, Platforms
from bot.settings import Settings
from memory import Fact, Scope
from memory.semantic import current_fact, normalize_feature, supersede
from memory.text import one_line, plural

from .backfill import BackfillState, Requester, describe, read_state, write_state
from .channel_memory import ChannelMemory, Forgotten, not_by
from .events import CommandEvent, Place, Replier
from .evidence import fact_text
from .responder import EARLIER, day

log = logging.getLogger(__name__)

UNAVAILABLE = "My memory is unavailable right now, so nothing was changed. Please try again later."

HELP = {
    "recall": "Usage: /recall <what to look for>, e.g. /recall database decision",
    "forget": (
        "Usage: /forget me (everything you said here), /forget <message link or id> (one"
        " message of yours; the id may be the memory's uid), /forget channel (channel admins:"
        " the whole channel)"
    ),
    "remember": "Usage: /remember <a fact about you>, e.g. /remember role: backend developer",
    "memory": (
        "Usage: /memory (what I keep), /memory off (stop storing you), /memory on,"
        " /memory backfill (channel admins: read this channel's history again)"
    ),
}

FACT_PAIR = re.compile(r"^(?P<feature>[\w][\w \-]{0,39}?)\s*[:=]\s*(?P<value>\S.*)$", re.UNICODE)


def parse_message_ref(text: str, place: Place, platforms: Platforms) -> MessageRef | None:
    """A message link of any platform (so that a link from elsewhere is recognised and
    refused), or a message id as the platform of ``place`` stores it (a bare ts of this
    channel on Slack, a snowflake on Discord, the id shown by the console)."""
    text = text.strip().strip("<>").split("|", 1)[0].strip()
    if not text or any(c.isspace() for c in text):
        return None
    for platform in platforms:
        if (ref := platform.parse_link(text)) is not None:
            return ref
    if text.startswith(("http://", "https://")):
        return None
    return MessageRef(place.platform, platforms.of(place.platform).message_id(text, place))


def here(place: Place) -> str:
    if place.is_dm:
        return "this conversation"
    return f"#{place.channel_name.lstrip('#')}" if place.channel_name else "this channel"


def org_word(place: Place, platforms: Platforms) -> str:
    """What the org of ``place`` is called: a DM is its own ("conversation")."""
    return "conversation" if place.is_dm else platforms.of(place.platform).org_word


class Commands:
    def __init__(self, channels: ChannelMemory, settings: Settings, platforms: Platforms) -> None:
        self.channels = channels
        self.settings = settings
        self.platforms = platforms
        #: platform name -> how to start a backfill there (set by the app for Slack, Discord)
        self.backfill: dict[str, Requester] = {}

    async def handle(self, event: CommandEvent, replier: Replier) -> str:
        """Run a command and answer the asker only. Returns the text sent."""
        try:
            text = await self._run(event, replier)
        except Exception:
            log.exception("command /%s failed", event.name)
            text = UNAVAILABLE
        await replier.ephemeral(text)
        return text

    async def _run(self, event: CommandEvent, replier: Replier) -> str:
        arg = event.text.strip()
        if event.name == "recall":
            return await self.recall(event, arg, replier)
        if event.name == "forget":
            if event.target_source_id:
                return await self.forget_message(
                    event, MessageRef(event.place.platform, event.target_source_id)
                )
            return await self.forget(event, arg)
        if event.name == "remember":
            return await self.remember(event, arg)
        if event.name == "memory":
            return await self.memory(event, arg)
        return HELP.get(event.name, "Unknown command.")

    # -- /recall ---------------------------------------------------------------------------

    async def recall(self, event: CommandEvent, query: str, replier: Replier) -> str:
        """What the channel's memory holds on ``query``, in the order an answer would give it
        (:mod:`bot.core.evidence`): statements, newest word first with what it replaced."""
        if not query:
            return HELP["recall"]
        place = event.place
        facts = await self.channels.memory.facts(
            place.org_id,
            self.settings.project,
            subject=event.author.id,
            produced_for=place.channel_id,
        )
        found = await self.channels.evidence(
            query,
            event.author.display_name,
            place,
            top_k=self.settings.recall_top_k,
            facts=facts,
            asker_id=event.author.id,
        )
        write = self.platforms.of(place.platform)
        shown = write.escape(one_line(query, 80))
        if not found.leads:
            return f"I don't remember anything about “{shown}” in {here(place)}."

        async def line(key: str) -> str:
            if key in found.facts:
                fact = found.facts[key]
                told = write.escape(one_line(fact_text(fact), 200))
                return f"you told me on {day(fact.created_at)}: {told}"
            ep = found.episode(key)
            assert ep is not None
            url = ep.link
            if url is None and ep.source_id:
                url = await _permalink(replier, ep.source_id)
            when = write.link(url, day(ep.created_at))
            author = write.escape(ep.display_name)
            return f"{author}, {when}: {write.escape(one_line(ep.content, 200))}"

        lines = [f"What I remember about “{shown}” in {here(place)}:"]
        for lead in found.leads:
            lines.append(f"• {await line(lead.key)}")
            lines += [f"  {EARLIER} {await line(key)}" for key in lead.earlier]
        return "\n".join(lines)

    # -- /forget ---------------------------------------------------------------------------

    async def forget(self, event: CommandEvent, arg: str) -> str:
        word = arg.lower()
        if not arg:
            return HELP["forget"]
        if word == "me":
            return await self.forget_me(event)
        if word in ("channel", "this channel"):
            return await self.forget_channel(event)
        ref = parse_message_ref(arg, event.place, self.platforms)
        if ref is None:
            return f"I can't read “{one_line(arg, 80)}” as a message link or id. {HELP['forget']}"
        return await self.forget_message(event, ref)

    async def forget_me(self, event: CommandEvent) -> str:
        place = event.place
        done = await self.channels.forget_user(place.org_id, event.author.id)
        where = org_word(place, self.platforms)
        if not (done.messages or done.facts or done.replies):
            return f"I had nothing from you in this {where}: nothing to forget."
        return f"Done. I forgot everything you said in this {where}: {done.describe()}."

    def _channel_admin(self, event: CommandEvent) -> bool:
        return (
            event.is_channel_admin or event.place.is_dm or self.settings.is_admin(event.author.id)
        )

    async def forget_channel(self, event: CommandEvent) -> str:
        place = event.place
        if not self._channel_admin(event):
            return (
                "Only a channel admin can make me forget this whole channel. You can forget"
                " what you said with /forget me, or one message with /forget <link>."
            )
        done = await self.channels.forget_channel(place)
        return f"Done. I forgot {here(place)}: {_all(done)}."

    async def forget_message(self, event: CommandEvent, ref: MessageRef) -> str:
        place = event.place
        if ref.platform != place.platform:
            return (
                f"That link is from {ref.platform}; here I can only forget"
                f" {place.platform} messages."
            )
        if ref.org_id is not None and ref.org_id != place.org_id:
            where = self.platforms.of(place.platform).org_word
            return f"That message is from another {where}; I can only forget messages of this one."
        memory = self.channels.memory
        episode = await memory.get_by_source(self.channels.ref(place, ref.source_id))
        if episode is None and ref.org_id is None:  # a memory uid (as /recall and export show)
            found = await memory.get(place.org_id, self.settings.project, [ref.source_id])
            episode = found[0] if found else None
        if episode is None:
            return "I have no such message in memory (it may be forgotten already)."
        answer_to_asker = (
            episode.producer == self.channels.bot_id(place)
            and episode.metadata.get("reply_to") == event.author.id
        )
        if episode.producer != event.author.id and not answer_to_asker:
            return (
                "That message is not yours, so I can't forget it for you. Its author can,"
                " with /forget on it, or a channel admin with /forget channel."
            )
        done = await self.channels.forget_uids(place.org_id, [episode.uid])
        return f"Done. I forgot {done.describe()}."

    # -- /remember -------------------------------------------------------------------------

    async def remember(self, event: CommandEvent, text: str) -> str:
        place = event.place
        if not text:
            return HELP["remember"]
        if await self.channels.opted_out(place.org_id, event.author.id):
            return "Your memory is off, so I did not keep that. /memory on turns it back on."
        value = one_line(text, 300)
        if m := FACT_PAIR.match(value):
            feature, value = normalize_feature(m["feature"]), m["value"].strip()
        else:
            digest = hashlib.sha256(value.lower().encode()).hexdigest()[:8]
            feature = f"note_{digest}"
        project = self.settings.project
        known = await self.channels.memory.facts(
            place.org_id, project, subject=event.author.id, produced_for=place.channel_id
        )
        fact = Fact(
            org_id=place.org_id,
            project_id=project,
            subject=event.author.id,
            produced_for=place.channel_id,
            category="explicit",
            tag="remember",
            feature=feature,
            value=value,
            metadata={"source": "remember", "display_name": event.author.display_name},
        )
        if await supersede(self.channels.memory, fact, current_fact(known, feature)) is None:
            return f"I already know that, and use it in {here(place)}."
        shown = self.platforms.of(place.platform).escape(one_line(value, 120))
        return (
            f"Noted: “{shown}”. I'll use it when you ask me in {here(place)}."
            " (/forget me removes it.)"
        )

    # -- /memory ---------------------------------------------------------------------------

    async def memory(self, event: CommandEvent, arg: str) -> str:
        word = arg.lower()
        place, user = event.place, event.author.id
        if word in ("off", "on"):
            await self.channels.set_memory(place.org_id, user, on=word == "on")
            if word == "on":
                return "Memory is on again: I'll remember what you say from now on."
            kept = await self._messages_of(place.org_id, user)
            where = org_word(place, self.platforms)
            return (
                f"Memory is off for you: I won't store what you say in this {where} from now"
                f" on. I still keep {plural(kept, 'message')} you wrote before; /forget me"
                " deletes them."
            )
        if word == "backfill":
            return await self.start_backfill(event)
        if arg:
            return HELP["memory"]
        return await self.status(event)

    async def start_backfill(self, event: CommandEvent) -> str:
        """``/memory backfill``: a channel admin has the channel's history read (again), also
        after ``/forget channel``."""
        place = event.place
        if not self._channel_admin(event):
            return "Only a channel admin can have me read this channel's history."
        request = self.backfill.get(place.platform)
        if request is None or place.is_dm:
            return f"I can't read the history of {here(place)}."
        project = self.settings.project
        await write_state(
            self.channels.memory,
            project,
            place.org_id,
            place.channel_id,
            BackfillState(status="requested"),
        )
        if not await request(place):
            return f"I can't read the history of {here(place)} (history backfill is off)."
        return (
            f"I'm reading the history of {here(place)}, back"
            f" {plural(self.settings.backfill_days, 'day')}; /memory shows how far I got."
        )

    async def status(self, event: CommandEvent) -> str:
        place, user = event.place, event.author.id
        project = self.settings.project
        off = await self.channels.opted_out(place.org_id, user)
        total = await self._messages_of(place.org_id, user)
        in_channel = await self.channels.memory.count(
            Scope(
                org_id=place.org_id,
                project_id=project,
                producer=user,
                produced_for=place.channel_id,
            )
        )
        facts = await self.channels.memory.facts(
            place.org_id, project, subject=user, produced_for=place.channel_id
        )
        channel = await self.channels.memory.count(  # what was said, not the bot's replies
            self.channels.scope(place), not_by(self.channels.bot_id(place))
        )
        days = self.settings.retention_days
        retention = f"for {days} days" if days else "until they are deleted"
        where = org_word(place, self.platforms)
        history = describe(
            await read_state(self.channels.memory, project, place.org_id, place.channel_id)
        )
        return "\n".join(
            [
                f"Memory for you in this {where}: {'OFF' if off else 'on'}.",
                f"• From you: {plural(total, 'message')} in this {where}"
                f" ({in_channel} in {here(place)}), {plural(len(facts), 'fact')} about you used"
                f" in {here(place)}.",
                f"• {here(place).capitalize()}: {plural(channel, 'message')} remembered, used only"
                f" to answer questions asked in {here(place)}.",
                *([history] if history else []),
                f"• Messages are kept {retention}; deleted or edited messages follow.",
                "• /memory off stops storing you · /forget me deletes what you said ·"
                " /forget <link> deletes one message · /recall <query> shows what I remember.",
            ]
        )

    async def _messages_of(self, org_id: str, user: str) -> int:
        total = 0
        kept = await self.channels.memory.list_projects(org_id)
        projects = {p for _, p in kept} | {self.settings.project}
        for project in sorted(projects):
            total += await self.channels.memory.count(
                Scope(org_id=org_id, project_id=project, producer=user)
            )
        return total


async def _permalink(replier: Replier, source_id: str) -> str | None:
    try:
        return await replier.permalink(source_id)
    except Exception:
        log.warning("no permalink for %s", source_id, exc_info=True)
        return None


def _all(done: Forgotten) -> str:
    return (
        f"{plural(done.messages, 'message')}, {plural(done.replies, 'bot answer')} and"
        f" {plural(done.facts, 'fact')}"
    )
