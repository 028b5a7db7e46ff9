"""SQL of the features built on the core schema, one module per feature (``store.py`` keeps what
existed before: conversations, messages, the change logs).

Each module here is plain functions over an open connection; the caller owns the transaction, as
with ``store.py``, and the statements run unchanged on PostgreSQL and SQLite.
"""
