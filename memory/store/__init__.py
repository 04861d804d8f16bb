"""Stores: the database that holds the memory's records (see :mod:`memory.store.base`)."""
