"""Benchmarks of the bot's own work (apart from the runtime modules)."""
