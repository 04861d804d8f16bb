"""The terminal as a chat platform (``channelmind chat``)."""
