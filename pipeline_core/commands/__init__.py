"""The command line, private to the host.

Commands that are not the engine (bench, evaluate, the listings) use the library as any
caller would, so nothing in the library depends on them.
"""
