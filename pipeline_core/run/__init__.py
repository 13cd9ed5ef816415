"""Running a recipe, private to the host.

The engine is split by job so each can change alone: the loop (one iteration), the run folder
(what is left behind however a run ends), and faults (what a failure is called and advised).
"""
