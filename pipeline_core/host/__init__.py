"""The plugin host, private to it.

Loading is kept apart from the registry plugins are handed, so a broken third-party plugin is
reported and skipped here and never reaches a run.
"""
