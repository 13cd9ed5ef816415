"""Sweeps: one recipe run over the cartesian product of a few settings, as ordinary run folders.

A researcher's question is rarely one image: every class of a model, a few learning rates,
five seeds. The sweep wing turns a sweep file (a recipe plus axes) into jobs, packs the jobs
into batches that one run can hold (:mod:`.plan`), runs the batches through the engine's own
:class:`~pipeline_core.run.engine.Run` (:mod:`.runner`), shares them among torchrun's ranks
(:mod:`.shard`), and indexes and shows the results (:mod:`.index`, :mod:`.sheets`). Each batch
is a plain run folder, so video, resume, replay and the record work as for ``pipeline run``.
"""
