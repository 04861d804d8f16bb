"""Benchmarks of the memory, apart from the runtime modules: retrieval quality (``locomo``,
``exact``), speed at size (``scale``, ``load``, ``embed``, ``forget``), the stores side by side
(``stores``), and the throwaway services they start (``services``). ``channelmind bench ...``
runs them."""
