"""metrics.jsonl: the run's numbers over the iterations, one JSON line each time they are read.

The loop reads numbers only when the progress display is due (a few times a second), so
the record costs nothing on the iterations between. At those moments :meth:`MetricsLog.record`
gathers the total loss, each objective's term per image, the target's probability and the
top-1 class per image into one small tensor. On a CPU it is written at once; on a GPU it is
copied into pinned memory without waiting and written once the copy has landed (looked at
with a non-blocking event query at the next reading, and waited for only at the end), so
recording never adds a synchronisation.

Each line is appended and flushed: a run killed at any moment keeps every line it had. A
resumed run first drops the lines past its checkpoint (a killed run may have gone further than
its last checkpoint), then appends, so no iteration appears twice.

A line: ``{"iteration": N, "seconds": S, "loss": L, "terms": {label: [per image]},
"p_target": [per image], "top1": [per image]}``; ``iteration`` counts the iterations done
(as the progress bar and the video frames do), ``p_target`` is absent when no objective aims
at a class.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline_core import regular
from pipeline_core.writers import write_atomically

FILE = "metrics.jsonl"


def _number(value: float) -> float | None:
    """JSON has no NaN: a non-finite value is written as null."""
    return round(value, 6) if math.isfinite(value) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a metrics file; a line cut short by a kill is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        text = regular.read_text(path, errors="replace")  # a FIFO is refused, never waited on
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("iteration"), int):
            rows.append(row)
    return rows


def trim_metrics(path: Path, iteration: int) -> list[dict[str, Any]]:
    """Keep only the lines up to ``iteration`` (a resume's checkpoint); returns them."""
    rows = [r for r in read_metrics(path) if r["iteration"] <= iteration]
    if path.exists():
        write_atomically(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    return rows


def _per_image(term: torch.Tensor, batch: int) -> torch.Tensor | None:
    """An objective's term as one value per image (a scalar is shared out); None if it is neither."""
    flat = term.detach().float().reshape(-1)
    if flat.numel() == batch:
        return flat
    if flat.numel() == 1:
        return flat.expand(batch) / batch
    return None


class MetricsLog:
    """The run's metrics: appended to ``metrics.jsonl`` and kept in memory for the video's panels.

    ``history`` is only ever appended to, so the writer thread may read it while the loop adds.
    """

    def __init__(self, path: Path, primary: torch.Tensor | None, started: float | None = None,
                 resume_from: int | None = None):
        self.path = path
        self.primary = primary  #: per image, the class whose probability is recorded
        self.started = time.time() if started is None else started
        self.history: list[dict[str, Any]] = trim_metrics(path, resume_from) if resume_from is not None else []
        self._pending: list[tuple[int, float, list[str], torch.Tensor, Any]] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a" if resume_from is not None else "w", encoding="utf-8")

    def record(self, iteration: int, total: torch.Tensor, terms: Sequence[tuple[str, torch.Tensor]],
               logits: torch.Tensor | None) -> None:
        """The numbers after ``iteration`` iterations, read without waiting for the device."""
        with torch.no_grad():
            batch = int(terms[0][1].numel()) if terms else (logits.shape[0] if logits is not None else 1)
            parts = [total.detach().float().reshape(1)]
            terms = [(label, _per_image(t, batch)) for label, t in terms]
            terms = [(label, t) for label, t in terms if t is not None]
            parts += [t for _, t in terms]
            has_logits = logits is not None and logits.dim() == 2 and logits.shape[0] == batch
            if has_logits:
                probs = torch.softmax(logits.detach().float(), dim=1)
                if self.primary is not None and self.primary.numel() == batch:
                    parts.append(probs.gather(1, self.primary.view(-1, 1).to(probs.device)).reshape(-1))
                parts.append(probs.argmax(dim=1).float())
            packed = torch.cat([p.to(parts[0].device) for p in parts])
            labels = [label for label, _ in terms]
            seconds = time.time() - self.started
            if packed.is_cuda:
                host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
                host.copy_(packed, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(torch.cuda.current_stream(packed.device))
                self._pending.append((iteration, seconds, labels, host, (ready, batch, has_logits)))
                self.poll()
            else:
                self._write(iteration, seconds, labels, packed.cpu(), batch, has_logits)

    def poll(self, wait: bool = False) -> None:
        """Write the readings whose copy from the GPU has landed (all of them with ``wait``)."""
        while self._pending:
            iteration, seconds, labels, host, (ready, batch, has_logits) = self._pending[0]
            if not ready.query():  # a query never waits
                if not wait:
                    return
                ready.synchronize()
            self._pending.pop(0)
            self._write(iteration, seconds, labels, host, batch, has_logits)

    def _write(self, iteration: int, seconds: float, labels: list[str], values: torch.Tensor, batch: int,
               has_logits: bool) -> None:
        v = values.tolist()
        row: dict[str, Any] = {"iteration": iteration, "seconds": round(seconds, 3), "loss": _number(v[0])}
        at = 1
        terms = {}
        for label in labels:
            terms[label] = [_number(x) for x in v[at:at + batch]]
            at += batch
        row["terms"] = terms
        if has_logits:
            if self.primary is not None and self.primary.numel() == batch:
                row["p_target"] = [_number(x) for x in v[at:at + batch]]
                at += batch
            row["top1"] = [int(x) for x in v[at:at + batch]]
        with self._lock:
            self.history.append(row)
            if not self._file.closed:
                self._file.write(json.dumps(row) + "\n")
                self._file.flush()

    def close(self) -> None:
        """Write what is still on its way from the GPU and close the file. A second call does nothing."""
        if self._file.closed:
            return
        try:
            self.poll(wait=True)
        finally:
            with self._lock:
                self._file.close()
