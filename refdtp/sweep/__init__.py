"""Experiments, not just runs: ``python -m refdtp.sweep``.

A sweep is presets x algorithms x grid values x seeds (:mod:`.spec`); each
point is one run of ``python -m refdtp.train`` (same entry point, run-directory
layout and checkpoints) in ``SWEEP_DIR/runs/<name>/``, executed as a Ray task
(:mod:`.engine`). Rerunning the same command skips finished runs and resumes
interrupted ones. Results (:mod:`.summary`): ``sweep.json``, ``summary.csv``,
``summary.md``, ``curves.png`` and, with diagnostics, ``alignment.png``.
``python -m refdtp.sweep search`` (:mod:`.search`, :mod:`.space`) tunes one
preset with Optuna's TPE sampler, each trial a sweep run, the study in an
Optuna RDB storage (SQLite in the sweep folder by default).
Ray and Optuna are an optional extra: ``pip install 'refdtp[sweep]'``.
"""
