"""SQL of the features, one module per feature, named like its rules module one level up.

``messaging/attachments.py`` decides, ``messaging/storage/attachments.py`` holds its statements (as
plain functions over an open connection: the caller owns the transaction). ``store.py`` keeps the
statements of what came before this package.
"""
