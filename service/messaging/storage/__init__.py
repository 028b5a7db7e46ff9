"""SQL of features, one module per feature named like its logic module (``outbox.py`` here for
``messaging/outbox.py``); ``store.py`` keeps the statements that were there before."""
