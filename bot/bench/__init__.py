"""Benchmarks of the bot's own work (apart from the runtime modules): ``bench import``,
``bench answers``."""
