"""The dataset of a run, read from where the run's config says.

``Config.data_dir`` (the download and cache folder) and ``Config.source`` (a
user archive or extracted dataset folder) are stored with the run, so that
``evaluate`` and ``--resume`` read the same data as the training did,
without ``--data-dir`` being repeated (and never downloading elsewhere).
"""
from __future__ import annotations

from pathlib import Path

from data_loaders import load_dataset

from ..config import SOURCE_DATASETS, Config
from .overrides import ConfigError


def absolute(path: str | None) -> str:
    """``path`` as an absolute path string ("" for None or "")."""
    return str(Path(path).expanduser().absolute()) if path else ""


def open_dataset(cfg: Config, download: bool = True, data_dir: str | None = None,
                 source: str | None = None):
    """Load ``cfg.dataset`` from ``cfg.data_dir`` / ``cfg.source`` (or the given overrides).

    Args:
        cfg: the run's config.
        download: allow a download when neither the source nor a cache is found.
        data_dir, source: override the config's values (None: use the config's).

    Returns:
        A :class:`data_loaders.Dataset` (call ``close()`` or use ``with``).

    Raises:
        DataError: the data cannot be found, downloaded or read.
        ConfigError: a source for a dataset that is not read from files.
    """
    data_dir = data_dir or cfg.data_dir or None
    source = source or cfg.source or None
    if source and cfg.dataset not in SOURCE_DATASETS:
        raise ConfigError(f"source {source!r} is not used by dataset {cfg.dataset!r}; "
                          f"source applies to {', '.join(SOURCE_DATASETS)}")
    kw = {"source": source} if source else {}
    return load_dataset(cfg.dataset, data_dir, download=download, **kw)
