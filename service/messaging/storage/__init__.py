"""SQL by feature: each module here holds the statements of the rules module of the same name
(``messaging/<feature>.py``), as plain functions over an open connection whose transaction the
caller owns. ``store.py`` keeps the statements that existed before this split."""
