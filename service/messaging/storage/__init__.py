"""The SQL of each feature, in a module named like the feature's rules module.

``messaging.<feature>`` decides; ``messaging.storage.<feature>`` holds its statements, as plain
functions over an open connection (the caller owns the transaction), as ``store.py`` does for
conversations and messages.
"""
