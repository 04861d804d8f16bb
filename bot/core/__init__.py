"""The core: platform-neutral events in, answers and memory operations out. It decides what
is remembered, whether the bot is addressed, who may forget what, and how DMs are scoped; it
never names a platform."""
