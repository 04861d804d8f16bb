"""The ChannelMind API (``/api/cm``): what MemMachine's v2 cannot express; its routes and its
bodies (the bodies shared with :class:`memory.client.MemoryClient`)."""
