"""Reproductions of the paper's experiments: ``python -m verify.paper EXPERIMENT``.

Each experiment (:mod:`.registry`) states what it reproduces, its source in
the paper or the official code, its protocol and the published numbers; it
prints ours (mean ± sd over seeds) beside theirs with a verdict per row.
Training experiments run their seeds through :mod:`refdtp.sweep`; the others
as Ray tasks. ``--quick`` is a reduced protocol for CI, labelled as such.
"""
