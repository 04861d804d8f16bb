"""A fake OpenAI-compatible server on 127.0.0.1, and its tests."""
