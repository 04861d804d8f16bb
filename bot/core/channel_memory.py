"""Chat-level memory operations shared by the conversation core and the commands.

This is where the chat rules meet the engine, once: which scope a place reads (its channel,
never another), how a message becomes an episode, who opted out, what "relevant" means, and
what forgetting removes (the messages, the facts that cite them, and the bot's answers that
were given to or quoted from them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from bot.settings import Settings
from memory import Episode, Fact, Scope, SourceRef, TimeRange, parse_filter
from memory.client import MemoryAccessDenied
from memory.filters import Comparison, Filter
from memory.model import LINK_KEY, NAME_KEY, embed_text, utcnow
from memory.protocol import Memory
from memory.semantic import SemanticMemory
from memory.text import plural

from .backfill import mark_forgotten
from .events import MessageEvent, Place, dm_org, pid, platform_of
from .evidence import (
    FACT_KEY,
    Kind,
    Lead,
    about_asker,
    fact_candidate,
    fact_key,
    fact_text,
    first_person,
    kind_of,
    may_answer,
    message_candidate,
    order,
    strong,
)
from .subjects import Question, terms, values
from .tokens import read_keyed, write_keyed

log = logging.getLogger(__name__)

#: Per-user settings, stored with ``memory.set_setting(org, project, user, key, value)``.
MEMORY_KEY = "memory"  # "off" when the user opted out of being stored
NOTICE_KEY = "memory_off_notice"  # "sent" once the bot told an opted-out user so
#: Episode metadata the chat layer writes besides the memory's own (NAME_KEY, LINK_KEY).
MENTIONS_BOT = "mentions_bot"  # the message mentioned the bot (or replied to it)
IS_DM = "is_dm"
CHANNEL_NAME = "channel_name"

#: The records of the bot's answers: every reply it stores says what it answered and cited
#: (``answer_metadata``), which is what forgetting follows. (Whether a message *is* the bot's
#: is who produced it: :meth:`ChannelMemory.bot_id`; never the role, which agents use too.)
ANSWER_KIND = "answer_kind"
ANSWERS = parse_filter(f"metadata.{ANSWER_KIND} IS NOT NULL")
PAGE = 1000
FOLLOWED = 3  # the best matches whose later updates an answer looks for
LATER_TOP_K = 5


def by(producer: str) -> Filter:
    """Messages produced by ``producer`` (the bot's replies: by the bot's id, not a role)."""
    return Comparison("producer", "=", producer)


def not_by(producer: str) -> Filter:
    return Comparison("producer", "!=", producer)


@dataclass(frozen=True)
class Found:
    """A search hit as the chat layer sees it."""

    episode: Episode
    relevant: bool  # matches the words of the query, or (real embedders) its meaning
    expanded: bool  # a neighbour added for context, not a match of its own
    kind: Kind = "statement"  # evidence, or a question / the bot's reply (context)
    score: float = 0.0  # the search's score (a neighbour's is its anchor's, a little less)


@dataclass
class Evidence:
    """What an answer may cite, and in which order (:mod:`bot.core.evidence`)."""

    found: list[Found]  # best first; later updates found for them at the end
    leads: list[Lead]  # the answer order, over episode uids and fact keys
    facts: dict[str, Fact]  # the asker's facts that match the question, by key

    def episode(self, key: str) -> Episode | None:
        return next((f.episode for f in self.found if f.episode.uid == key), None)


@dataclass
class Forgotten:
    """What a forget removed."""

    messages: int = 0
    facts: int = 0
    replies: int = 0  # the bot's answers to, or quoting, what was forgotten

    def __iadd__(self, other: Forgotten) -> Forgotten:
        self.messages += other.messages
        self.facts += other.facts
        self.replies += other.replies
        return self

    def describe(self) -> str:
        parts = [plural(self.messages, "message"), plural(self.facts, "fact")]
        text = " and ".join(parts)
        if self.replies:
            text += f", plus {plural(self.replies, 'bot answer')} that used them"
        return text


def role_of(event: MessageEvent) -> str:
    """``assistant`` for the bot's own messages (its earlier answers), ``user`` otherwise."""
    own = bool(event.place.bot_id) and event.author.id == event.place.bot_id
    return "assistant" if own else "user"


class ChannelMemory:
    def __init__(
        self, memory: Memory, settings: Settings, semantic: SemanticMemory | None = None
    ) -> None:
        self.memory = memory
        self.settings = settings
        self.semantic = semantic

    @property
    def project(self) -> str:
        return self.settings.project

    # -- where -----------------------------------------------------------------------------

    def scope(self, place: Place, *, thread: bool = False) -> Scope:
        """The channel of a place (its thread with ``thread``): all a place may read."""
        return Scope(
            org_id=place.org_id,
            project_id=self.project,
            produced_for=place.channel_id,
            thread_id=place.thread_id if thread else None,
        )

    def ref(self, place: Place, source_id: str, platform: str | None = None) -> SourceRef:
        return SourceRef(
            org_id=place.org_id,
            project_id=self.project,
            platform=platform or place.platform,
            source_id=source_id,
        )

    @staticmethod
    def bot_id(place: Place) -> str:
        return place.bot_id or pid(place.platform, "bot")

    # -- opting out ------------------------------------------------------------------------

    # A person's choice outlives ``/forget me`` (forgetting someone must not start remembering
    # them), so it is kept under a keyed token of their id, never the id itself.

    async def opted_out(self, org_id: str, user: str) -> bool:
        return await self._user_setting(org_id, user, MEMORY_KEY) == "off"

    async def set_memory(self, org_id: str, user: str, on: bool) -> None:
        await self._set_user_setting(org_id, user, MEMORY_KEY, None if on else "off")
        await self._set_user_setting(org_id, user, NOTICE_KEY, None)
        if not on and self.semantic is not None:
            self.semantic.discard(org_id=org_id, producer=user)

    async def first_notice(self, org_id: str, user: str) -> bool:
        """True exactly once after a user opted out: the bot tells them, then stays quiet."""
        if await self._user_setting(org_id, user, NOTICE_KEY):
            return False
        await self._set_user_setting(org_id, user, NOTICE_KEY, "sent")
        return True

    async def _user_setting(self, org_id: str, user: str, key: str) -> str | None:
        return await read_keyed(self.memory, self.project, org_id, "user", user, key)

    async def _set_user_setting(self, org_id: str, user: str, key: str, value: str | None) -> None:
        await write_keyed(self.memory, self.project, org_id, "user", user, key, value)

    # -- storing ---------------------------------------------------------------------------

    async def store_message(self, event: MessageEvent, role: str) -> Episode | None:
        """Store a message as an episode; returns it with its uid, or None when its source
        was stored before (a platform's retry, or the same event given to another worker).
        The store decides, so of any number of workers on one memory exactly one is told
        the message is new."""
        episode = self.episode(event, role)
        (added,) = await self.memory.add_outcomes([episode])
        return episode.model_copy(update={"uid": added.uid}) if added.new else None

    def episode(self, event: MessageEvent, role: str | None = None) -> Episode:
        """The episode a message is stored as: the one mapping for live messages, imports
        and backfill (``role`` defaults to :func:`role_of`)."""
        place = event.place
        metadata: dict[str, Any] = dict(event.metadata)
        metadata.update({NAME_KEY: event.author.display_name, IS_DM: place.is_dm})
        if place.channel_name:
            metadata[CHANNEL_NAME] = place.channel_name
        if event.link:
            metadata[LINK_KEY] = event.link
        if event.mentions_bot:
            metadata[MENTIONS_BOT] = True
        if event.author.is_bot:
            metadata["is_bot"] = True
        return Episode(
            org_id=place.org_id,
            project_id=self.project,
            producer=event.author.id,
            produced_for=place.channel_id,
            role=role or role_of(event),
            content=event.text,
            created_at=event.created_at,
            platform=place.platform,
            source_id=event.source_id,
            thread_id=place.thread_id,
            metadata=metadata,
        )

    async def store_reply(
        self, place: Place, text: str, source_id: str | None, metadata: dict[str, Any]
    ) -> Episode:
        """Store the bot's own reply, produced by the bot, for the channel."""
        meta: dict[str, Any] = {NAME_KEY: self.settings.bot_name, IS_DM: place.is_dm}
        if place.channel_name:
            meta[CHANNEL_NAME] = place.channel_name
        meta.update(metadata)
        episode = Episode(
            org_id=place.org_id,
            project_id=self.project,
            producer=self.bot_id(place),
            produced_for=place.channel_id,
            role="assistant",
            content=text,
            created_at=utcnow(),
            platform=place.platform,
            source_id=source_id,
            thread_id=place.thread_id,
            metadata=meta,
        )
        (uid,) = await self.memory.add([episode])
        return episode.model_copy(update={"uid": uid})

    # -- reading ---------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        place: Place,
        *,
        top_k: int,
        expand: int = 0,
        exclude: Iterable[str] = (),
        fallback: bool = True,
    ) -> list[Found]:
        """What was stated in this place's channel about ``query``, best first; when nothing
        stated is relevant (and ``fallback``), the questions and the bot's replies that are
        (the evidence rule, :mod:`bot.core.evidence`).

        Hybrid search ranks; a hit is *relevant* when it shares words with the query (the
        keyword index, stemmed) or, with a real embedding model, is close enough in meaning.
        Vector search always returns the nearest messages, near or not, so this is what lets
        the bot say "the conversation does not tell" instead of quoting noise."""
        bot = self.bot_id(place)
        found = await self._search(query, place, top_k, expand, exclude, bot)
        if any(f.relevant for f in found) or not fallback:
            return found
        everything = await self._search(query, place, top_k, expand, exclude, None)
        return [replace(f, kind=kind_of(f.episode, bot)) for f in everything]

    async def _search(
        self,
        query: str,
        place: Place,
        top_k: int,
        expand: int,
        exclude: Iterable[str],
        bot: str | None,
    ) -> list[Found]:
        """Search the channel: without ``bot``'s replies and questions when ``bot`` is given,
        everything when not."""
        scope = self.scope(place)
        skip = set(exclude)
        filters = not_by(bot) if bot else None
        statements_only = bot is not None
        hybrid, keyword = await asyncio.gather(
            self.memory.search(
                query,
                scope,
                filters,
                top_k=top_k + len(skip),
                expand_context=expand,
                statements_only=statements_only,
            ),
            self.memory.search(
                query,
                scope,
                filters,
                top_k=max(50, top_k * 5),
                mode="keyword",
                statements_only=statements_only,
            ),
        )
        # The keyword index drops one-character tokens, so "4.2" or "9:30" match by value.
        asked = values(query)
        words = {h.episode.uid for h in keyword.hits}
        # (The engine adds neighbours for context whatever the filter: the bot's are dropped.)
        hits = [h for h in hybrid.hits if h.episode.uid not in skip and h.episode.producer != bot][
            :top_k
        ]
        words |= {h.episode.uid for h in hits if asked & values(h.episode.content)}
        # Neighbours are judged too: the engine marks a match "expanded" when it is also the
        # neighbour of a better hit, and a neighbour near in meaning is relevant anyway.
        near = await self._near_in_meaning(
            query, [h.episode for h in hits if h.episode.uid not in words]
        )
        return [
            Found(
                h.episode,
                h.episode.uid in words or h.episode.uid in near,
                h.expanded,
                score=h.score,
            )
            for h in hits
        ]

    async def later(
        self, episode: Episode, place: Place, top_k: int = LATER_TOP_K
    ) -> list[Episode]:
        """Statements made after ``episode`` in its channel on its subject (by its words, or
        its meaning with a real embedder): where an update of it would be."""
        result = await self.memory.search(
            episode.content,
            self.scope(place),
            not_by(self.bot_id(place)),
            top_k=top_k,
            time=TimeRange(since=episode.created_at),
            statements_only=True,
        )
        return [
            h.episode
            for h in result.hits
            if h.episode.created_at > episode.created_at and h.episode.uid != episode.uid
        ]

    async def evidence(
        self,
        text: str,
        asker: str,
        place: Place,
        *,
        top_k: int,
        expand: int = 0,
        exclude: Iterable[str] = (),
        facts: Sequence[Fact] = (),
        asker_id: str | None = None,
    ) -> Evidence:
        """What answers ``text`` asked by ``asker`` (a display name; ``asker_id`` when known)
        in ``place``, in the answer order of :mod:`bot.core.evidence`: the channel's relevant
        statements (else its relevant questions and bot replies that may answer), later
        updates of the best of them, and the asker's facts that a question in the first
        person matches."""
        query = about_asker(text, asker)
        question = Question.of(query, asker if first_person(text) else "")
        asked_about = question.terms - question.asker
        matching = {
            fact_key(f): f
            for f in facts
            if first_person(text) and asked_about & terms(fact_text(f))
        }
        found = await self.search(
            query, place, top_k=top_k, expand=expand, exclude=exclude, fallback=not matching
        )
        candidates = [
            message_candidate(f.episode, -f.score, update_only=not f.relevant)
            for f in found
            if may_answer(f.kind, f.episode, question, asker_id)
            and (f.relevant or f.kind == "statement")
        ]
        best = max((-c.rank for c in candidates), default=0.0)
        candidates += [fact_candidate(f, asker, -best - 1.0) for f in matching.values()]
        if any(f.relevant and f.kind == "statement" for f in found):
            known = {f.episode.uid for f in found} | set(exclude)
            followed = [c for c in strong(question, candidates) if not c.key.startswith(FACT_KEY)][
                :FOLLOWED
            ]
            for c in followed:
                episode = next(f.episode for f in found if f.episode.uid == c.key)
                for b in await self.later(episode, place):
                    if b.uid in known:
                        continue
                    known.add(b.uid)
                    found.append(Found(b, relevant=False, expanded=False, score=-c.rank))
                    candidates.append(message_candidate(b, c.rank, update_only=True))
        return Evidence(found, order(question, candidates), matching)

    async def _near_in_meaning(self, query: str, episodes: Sequence[Episode]) -> set[str]:
        """The episodes close to the query in meaning, by the memory's embedder (the server's,
        for a remote memory). The hashing embedder measures shared words, which the keyword
        index already does, so it judges nothing here."""
        if not episodes:
            return set()
        try:
            sims = await self.memory.similarities(query, [embed_text(e) for e in episodes])
        except Exception:
            log.exception("relevance check failed; using keyword matches only")
            return set()
        if sims is None:
            return set()
        limit = self.settings.relevance_threshold
        return {e.uid for e, s in zip(episodes, sims, strict=True) if s >= limit}

    async def recent(self, place: Place, n: int, exclude: Iterable[str] = ()) -> list[Episode]:
        """The recent window: the last ``n`` messages of the thread, or of the channel."""
        if n <= 0:
            return []
        skip = set(exclude)
        rows = await self.memory.recent(
            self.scope(place, thread=place.thread_id is not None), n + len(skip)
        )
        return [e for e in rows if e.uid not in skip][-n:]

    # -- forgetting ------------------------------------------------------------------------

    async def forget_uids(self, org_id: str, uids: Sequence[str]) -> Forgotten:
        """Forget episodes of this project by uid, the facts that cite only them, and the
        bot's answers given to them or quoting them."""
        project = self.project
        episodes = await self.memory.get(org_id, project, uids)
        if not episodes:
            return Forgotten()
        gone = {e.uid for e in episodes}
        facts = 0
        for channel in {e.produced_for for e in episodes}:
            cited = await self.memory.facts(
                org_id, project, produced_for=channel, include_superseded=True
            )
            facts += sum(1 for f in cited if f.citations and set(f.citations) <= gone)
        deleted = await self.memory.delete(org_id, project, sorted(gone))
        if self.semantic is not None:
            self.semantic.discard(uids=deleted)
        replies = await self._derived_replies(
            org_id, {e.produced_for for e in episodes}, gone, producer=None
        )
        result = Forgotten(
            messages=sum(1 for e in episodes if ANSWER_KIND not in e.metadata),
            facts=facts,
            replies=sum(1 for e in episodes if ANSWER_KIND in e.metadata),
        )
        if replies:
            result += await self.forget_uids(org_id, replies)
        return result

    async def forget_user(self, org_id: str, user: str) -> Forgotten:
        """Everything ``user`` said in the org (every project) and in their DMs with the bot
        (the platform's DM org), the facts about them, and the bot's answers to them or
        quoting them."""
        result = await self._forget_user_in(org_id, user, None)
        dms = dm_org(platform_of(user))
        if dms != org_id:
            try:  # the bot's own project: a DM may hold only a /remember, so no project row
                result += await self._forget_user_in(dms, user, self.project)
            except MemoryAccessDenied:
                log.info("memory: no access to %s, so no DMs of %s kept there", dms, user)
        return result

    async def _forget_user_in(self, org_id: str, user: str, project: str | None) -> Forgotten:
        report = await self.memory.forget(org_id, project_id=project, producer=user)
        if self.semantic is not None:
            self.semantic.discard(org_id=org_id, producer=user)
        result = Forgotten(messages=report.episodes, facts=report.facts)
        replies = await self._derived_replies(org_id, None, set(report.uids), producer=user)
        if replies:
            result += await self.forget_uids(org_id, replies)
        return result

    async def forget_channel(self, place: Place) -> Forgotten:
        """Everything said in a channel (the bot's answers too) and every fact learned there."""
        org, project, channel = place.org_id, self.project, place.channel_id
        scope = Scope(org_id=org, project_id=project, produced_for=channel)
        replies = await self.memory.count(scope, by(self.bot_id(place)))
        report = await self.memory.forget(org, project_id=project, produced_for=channel)
        # Facts that cite no message (``/remember``) were learned here too.
        left = await self.memory.facts(org, project, produced_for=channel, include_superseded=True)
        removed = await self.memory.delete_facts(org, project, [f.uid for f in left])
        if self.semantic is not None:
            self.semantic.discard(org_id=org, produced_for=channel)
        await mark_forgotten(self.memory, project, place)
        return Forgotten(
            messages=report.episodes - replies, facts=report.facts + removed, replies=replies
        )

    async def _derived_replies(
        self, org_id: str, channels: set[str] | None, gone: set[str], producer: str | None
    ) -> list[str]:
        """The bot's answers that answered or quoted the forgotten episodes (or ``producer``)."""
        scopes = (
            [Scope(org_id=org_id, project_id=self.project, produced_for=c) for c in channels]
            if channels is not None
            else [Scope(org_id=org_id, project_id=self.project)]
        )
        found: list[str] = []
        for scope in scopes:
            page = 0
            while True:
                rows = await self.memory.list(scope, ANSWERS, page_size=PAGE, page_num=page)
                for ep in rows:
                    meta = ep.metadata
                    cited = set(meta.get("cited_uids") or ())
                    hit = meta.get("reply_to_uid") in gone or bool(cited & gone)
                    if producer is not None:
                        hit = hit or meta.get("reply_to") == producer
                        hit = hit or producer in (meta.get("cited_producers") or ())
                    if hit:
                        found.append(ep.uid)
                if len(rows) < PAGE:
                    break
                page += 1
        return found

    # -- retention -------------------------------------------------------------------------

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Forget what is older than CHANNELMIND_RETENTION_DAYS in this project (every org).
        Returns the number of episodes forgotten; nothing happens without a retention."""
        days = self.settings.retention_days
        if not days:
            return 0
        cutoff = (now or utcnow()) - timedelta(days=days)
        older = f"created_at < date('{cutoff.isoformat()}')"
        total = 0
        for org, project in await self.memory.list_projects():
            if project == self.project:
                report = await self.memory.forget(org, project_id=project, filters=older)
                total += report.episodes
        return total
