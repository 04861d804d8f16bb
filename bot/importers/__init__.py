"""History from before the bot arrived: platform exports imported with ``channelmind import``
(:mod:`.slack_export`, :mod:`.discord_export`) and the live backfill of the channels the bot is
in (:mod:`.backfill`, reading through the adapters' ``history`` modules).

All three store through :class:`.sink.Sink` and map messages with the platforms' own mapping
(``bot.platforms.<name>.mapping``), so a message is stored exactly as the live adapter stores
it, the same privacy rules apply, and storing it again changes nothing.
"""
