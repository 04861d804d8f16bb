"""Discord: discord.py <-> the core, and Discord's markdown."""
