"""``messaging bench``: a load generator for the Socket.IO send path, usable on any deployment.

``main(argv)`` is the console entry point (``messaging bench ...``, or
``python -m messaging.bench ...``); see ``messaging.bench.cli`` for the options.
"""

from messaging.bench.cli import main

__all__ = ["main"]
