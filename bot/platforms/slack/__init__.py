"""Slack: slack-bolt (Socket Mode or HTTP) <-> the core, and Slack's mrkdwn."""
