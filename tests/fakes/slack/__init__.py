"""A fake Slack (Web API, Socket Mode, response_url hooks) on 127.0.0.1, and its tests."""
