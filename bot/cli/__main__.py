"""``python -m bot.cli``: the ``channelmind`` command."""

import sys

from bot.cli import main

sys.exit(main())
