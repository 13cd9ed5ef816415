"""Scoring images with independent classifiers, private to the host.

``pipeline evaluate`` scores a run's final images (and a sweep's, job by job) with models other
than the one that made them. The machinery both share lives here, below the commands and the
sweep wing, so each imports it downward: reading a run folder's final images and their targets
(:mod:`.images`) and ranking each target among a model's classes (:mod:`.score`).
"""
