"""The chat platforms. Each translates its events into :mod:`bot.core.events` and the core's
answers into its own calls and formatting (:mod:`bot.platforms.base`), and nothing else."""
