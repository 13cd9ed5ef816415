"""What a run shows while it goes, private to the host.

Frames are composed and encoded off the loop's thread, so watching a run never slows it.
"""
