"""The ChannelMind API (``/api/cm``): what MemMachine's v2 cannot express."""
