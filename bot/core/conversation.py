"""The core: store every message, decide whether the bot is addressed, answer, follow edits
and deletions.

Adapters (:mod:`bot.platforms`) turn platform events into :mod:`bot.core.events` and call
the four ``handle_*`` methods. Nothing here knows a platform's API; each platform's writing
rules come in as :class:`~bot.platforms.base.Platform` objects, looked up by name.

The order of a message's handling is the privacy and reliability model:

1. Store it as an episode first, unless its author opted out. Storing is idempotent by
   source and the store says whether this call stored it: only the worker it was new to
   answers, so a platform's retry, or one event given to two workers on one memory, is
   stored once and answered once. A failing memory is logged and the bot still answers.
2. Decide whether the bot is addressed, by one rule for every platform (:meth:`addressed`):
   a person (never a bot) DMs it, mentions it or replies to one of its messages, or writes
   in a thread the bot is part of.
3. If it is: gather context from this channel only (its relevant past messages, the recent
   window of the channel or thread, the asker's facts learned here), ask the responder (LLM,
   or extractive without one or when it fails), reply with links to the cited messages, and
   store the reply as the bot's episode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from bot.platforms.base import Platform, Platforms
from bot.settings import Settings
from memory import Episode, InvalidInput, protocol
from memory.lru import LruSet
from memory.semantic import SemanticMemory

from .channel_memory import MENTIONS_BOT, ChannelMemory, Evidence, Forgotten, by, role_of
from .commands import Commands
from .events import CommandEvent, DeleteEvent, EditEvent, MessageEvent, Place, Replier
from .evidence import kind_of
from .responder import Answer, AnswerContext, Quote, Responder, answer_metadata, citation

log = logging.getLogger(__name__)

OPTED_OUT_NOTICE = (
    "You turned memory off, so I don't store your messages (I'll only say this once)."
    " /memory on turns it back on."
)
SORRY = "Sorry, something went wrong while I was answering. Please try again."
MAX_FACTS_IN_PROMPT = 20
SEEN_EVENTS = 10_000
THREADS = 10_000  # threads the bot is known to be part of


class Conversation:
    """The core every adapter talks to."""

    def __init__(
        self,
        memory: protocol.Memory,
        responder: Responder,
        settings: Settings,
        semantic: SemanticMemory | None = None,
        platforms: Iterable[Platform] = (),
    ) -> None:
        self.memory = memory
        self.responder = responder
        self.settings = settings
        self.semantic = semantic if settings.semantic else None
        self.platforms = Platforms(platforms)
        self.channels = ChannelMemory(memory, settings, self.semantic)
        self.commands = Commands(self.channels, settings, self.platforms)
        self._seen: LruSet[tuple[str, str, str]] = LruSet(SEEN_EVENTS)
        #: (org, channel, thread root) of threads the bot answered in or started
        self._threads: LruSet[tuple[str, str, str]] = LruSet(THREADS)

    # -- messages --------------------------------------------------------------------------

    async def addressed(self, event: MessageEvent) -> bool:
        """Whether the bot answers ``event``: the one rule for every platform. A person (never
        a bot) talks to it when they DM it, mention it or reply to one of its messages, or
        write in a thread it is part of."""
        if event.author.is_bot:
            return False
        if event.place.is_dm or event.mentions_bot:
            return True
        return await self.in_bot_thread(event.place)

    async def in_bot_thread(self, place: Place) -> bool:
        """The bot answered in this thread, or its first message mentions it or is the
        bot's (known from answering, or else from memory)."""
        if place.thread_id is None:
            return False
        root = self.platforms.of(place.platform).thread_root(place)
        key = (place.org_id, place.channel_id, root or place.thread_id)
        if key in self._threads:
            return True
        try:
            thread = self.channels.scope(place, thread=True)
            joined = bool(await self.memory.count(thread, by(self.channels.bot_id(place))))
            if not joined and root is not None:
                first = await self.memory.get_by_source(self.channels.ref(place, root))
                joined = first is not None and (
                    first.producer == self.channels.bot_id(place)
                    or bool(first.metadata.get(MENTIONS_BOT))
                )
        except Exception:
            log.exception("memory: cannot tell whether the bot is in thread %s", place.thread_id)
            return False
        if joined:
            self._threads.add(key)
        return joined

    def _joined(self, place: Place, source_id: str) -> None:
        """The bot answered ``source_id`` in ``place``: it is part of that message's thread
        (the one it is in, or the one the answer starts on it)."""
        if place.is_dm:
            return
        if place.thread_id is not None:
            root = self.platforms.of(place.platform).thread_root(place) or place.thread_id
        else:
            root = source_id
        self._threads.add((place.org_id, place.channel_id, root))

    async def find_message(self, place: Place, source_id: str) -> Episode | None:
        """The stored record of a message of this place's org, or None (also when the memory
        cannot be read)."""
        try:
            return await self.memory.get_by_source(self.channels.ref(place, source_id))
        except Exception:
            log.warning("memory: looking up message %s failed", source_id, exc_info=True)
            return None

    async def handle_message(self, event: MessageEvent, replier: Replier) -> Episode | None:
        """Store a message and answer it when addressed. Returns the stored episode."""
        place = event.place
        key = (place.org_id, place.platform, event.source_id)
        if not self._seen.add(key):
            return None  # a retry of an event this process is handling or has handled

        role = role_of(event)
        try:
            opted_out = await self.channels.opted_out(place.org_id, event.author.id)
        except Exception:
            log.exception("memory: cannot read the opt-out of %s; not storing", event.author.id)
            opted_out, unknown = True, True
        else:
            unknown = False

        stored: Episode | None = None
        if not opted_out and event.text.strip():
            try:
                stored = await self.channels.store_message(event, role)
            except InvalidInput as exc:
                log.warning("message %s not stored: %s", event.source_id, exc)
            except Exception:
                log.exception("memory: storing message %s failed", event.source_id)
            else:
                if stored is None:
                    return None  # stored before: a retry, answered by whoever stored it
        if stored is not None and self.semantic is not None and role == "user":
            if not event.author.is_bot:
                try:
                    await self.semantic.observe(stored)
                except Exception:
                    log.exception("semantic memory: observe failed")

        if not event.text.strip() or not await self.addressed(event):
            return stored
        if opted_out and not unknown:
            try:
                if await self.channels.first_notice(place.org_id, event.author.id):
                    await replier.ephemeral(OPTED_OUT_NOTICE)
            except Exception:
                log.exception("could not tell %s that memory is off", event.author.id)
        await self._answer(event, replier, stored, store_reply=not opted_out)
        return stored

    async def _answer(
        self, event: MessageEvent, replier: Replier, asked: Episode | None, *, store_reply: bool
    ) -> None:
        place = event.place
        async with replier.working():
            try:
                ctx = await self.gather(event, asked)
                answer = await self.responder.respond(ctx)
                text = await self._render(answer, replier, self.platforms.of(place.platform))
            except Exception:
                log.exception("answering %s failed", event.source_id)
                answer, text = Answer(SORRY, (), "nothing"), SORRY
            try:
                source_id = await replier.reply(text)
            except Exception:
                log.exception("posting the reply to %s failed", event.source_id)
                return
        self._joined(place, event.source_id)
        if not store_reply:
            return
        try:
            meta = answer_metadata(answer, event.author.id, asked.uid if asked else None)
            await self.channels.store_reply(place, answer.text, source_id, meta)
        except Exception:
            log.exception("memory: storing the bot's reply failed")

    async def gather(self, event: MessageEvent, asked: Episode | None = None) -> AnswerContext:
        """The context of an answer, under the privacy rules: the asker's facts learned in
        this channel, the evidence from this channel's memory in answer order
        (:meth:`ChannelMemory.evidence`), and the recent window of the channel (or thread).
        Each part that fails is left out and flagged, never fatal."""
        place = event.place
        bot = self.channels.bot_id(place)
        ctx = AnswerContext(
            question=event.text,
            asker=event.author.display_name,
            place=place,
            stored=asked is not None,
        )
        exclude = [asked.uid] if asked is not None else []
        try:
            facts = await self.memory.facts(
                place.org_id,
                self.settings.project,
                subject=event.author.id,
                produced_for=place.channel_id,
            )
            ctx.facts = facts[:MAX_FACTS_IN_PROMPT]
        except Exception:
            log.exception("memory: reading facts failed")
        found = Evidence([], [], {})
        try:
            found = await self.channels.evidence(
                event.text,
                event.author.display_name,
                place,
                top_k=self.settings.context_top_k,
                expand=1,
                exclude=exclude,
                facts=ctx.facts,
                asker_id=event.author.id,
            )
        except Exception:
            log.exception("memory: search failed")
            ctx.memory_error = True
        recent: list[Episode] = []
        try:
            recent = await self.channels.recent(
                place,
                self.settings.recent_messages,
                exclude=exclude + [f.episode.uid for f in found.found],
            )
        except Exception:
            log.exception("memory: reading the recent window failed")
            ctx.memory_error = True
        by_time = sorted(found.found, key=lambda f: f.episode.created_at)
        ctx.memories = [
            Quote(n, f.episode, relevant=f.relevant, kind=f.kind) for n, f in enumerate(by_time, 1)
        ]
        start = len(ctx.memories) + 1
        ctx.recent = [
            Quote(n, ep, relevant=False, kind=kind_of(ep, bot))
            for n, ep in enumerate(recent, start)
        ]
        ctx.leads, ctx.matching_facts = found.leads, found.facts
        return ctx

    async def _render(self, answer: Answer, replier: Replier, platform: Platform) -> str:
        citations = []
        for m in answer.cited:
            link = m.episode.link
            if link is None and m.episode.source_id:
                try:
                    link = await replier.permalink(m.episode.source_id)
                except Exception:
                    log.warning("no permalink for %s", m.episode.source_id, exc_info=True)
            citations.append(citation(m, link))
        return platform.render(answer.text, citations, sources=answer.kind == "llm")

    # -- edits, deletions, commands --------------------------------------------------------

    async def handle_edit(self, event: EditEvent) -> Episode | None:
        """Follow an edit: the episode takes the new text, facts learned from the old text
        only are dropped and the message is queued for extraction again."""
        if not event.text.strip():
            return None
        place = event.place
        try:
            edited = await self.memory.edit(self.channels.ref(place, event.source_id), event.text)
        except Exception:
            log.exception("memory: editing %s failed", event.source_id)
            return None
        if edited is None:
            return None
        await self._relearn(edited)
        return edited

    async def _relearn(self, edited: Episode) -> None:
        try:
            facts = await self.memory.facts(
                edited.org_id,
                edited.project_id,
                subject=edited.producer,
                produced_for=edited.produced_for,
                include_superseded=True,
            )
            stale = [f.uid for f in facts if f.citations == [edited.uid]]
            if stale:
                await self.memory.delete_facts(edited.org_id, edited.project_id, stale)
            if self.semantic is not None and edited.role == "user":
                await self.semantic.observe(edited)
        except Exception:
            log.exception("semantic memory: re-learning an edited message failed")

    async def handle_delete(self, event: DeleteEvent) -> Forgotten:
        """Forget deleted messages, the facts that cite only them, and the bot's answers
        given to them or quoting them."""
        place = event.place
        uids = []
        for source_id in event.source_ids:
            try:
                found = await self.memory.get_by_source(self.channels.ref(place, source_id))
            except Exception:
                log.exception("memory: looking up deleted message %s failed", source_id)
                continue
            if found is not None:
                uids.append(found.uid)
        if not uids:
            return Forgotten()
        return await self.channels.forget_uids(place.org_id, uids)

    async def handle_command(self, event: CommandEvent, replier: Replier) -> str:
        """``/recall``, ``/forget``, ``/remember``, ``/memory``; answered ephemerally.
        Returns the text sent."""
        return await self.commands.handle(event, replier)

    # -- upkeep ----------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Apply CHANNELMIND_RETENTION_DAYS (call it daily; the console runs it at start)."""
        return await self.channels.purge_expired()

    async def close(self) -> None:
        if self.semantic is not None:
            await self.semantic.close()
        await self.responder.close()
