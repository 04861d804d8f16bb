"""The vector index: the protocol the engine uses (:mod:`memory.index.base`) and Chroma behind
it, embedded or a server (:mod:`memory.index.chroma`)."""
