"""The SQL of each feature, in a module named like the feature's rules module.

``messaging.<feature>`` decides; ``messaging.storage.<feature>`` holds its statements, as plain
functions over an open connection (the caller owns the transaction): ``conversations.py``,
``messages.py``, ``message_changes.py``, ``groups.py``, ``receipts.py``, ``blocking.py``,
``attachments.py``, ``reports.py``, ``outbox.py``. What several of them share (the change log,
the row mapping of a message) is ``messaging/store.py``.
"""
