"""The one reader of stored results for the report and the reproduction tables.

:class:`RunReader` opens one run directory, or several run directories of one study
that differ only in their seeds, read-only, and reads them as one store
(``get_meta``, ``models()``, ``results()``), optionally restricted to some seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from sparserobust.config import StudyConfig
from sparserobust.errors import ConfigError, StoreError
from sparserobust.store import ModelRow, ResultStore


class StoredResults(Protocol):
    """What the report reads from a store: its models and results (a
    :class:`~sparserobust.store.ResultStore` or a :class:`RunReader`)."""

    def models(self) -> list[ModelRow]: ...

    def results(self) -> list[dict[str, Any]]: ...


class RunReader:
    """A read-only view of the results of one study: one run directory, or several of
    one config that differ only in their seeds (StoreError when they differ in more,
    or repeat a seed). With ``seeds``, only those seeds' models and results are read
    and the stored config's ``seeds`` become those seeds (so the report's completeness
    counts only them); ConfigError for a seed the study does not have.

    Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self, run_dirs: str | Path | Sequence[str | Path], seeds: Sequence[int] | None = None
    ) -> None:
        dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
        self.run_dirs = [Path(d) for d in dirs]
        self.stores: list[ResultStore] = []
        try:
            for d in self.run_dirs:
                self.stores.append(ResultStore(d, readonly=True))
            self._configs = [json.loads(st.get_meta("config") or "{}") for st in self.stores]
            self._check_same_study()
            have = sorted({s for c in self._configs for s in c.get("seeds") or []})
            self.study_seeds: list[int] = have
            """The seeds of the study's stored config(s), all runs together."""
            if seeds is not None:
                have = have or sorted({m.seed for st in self.stores for m in st.models()})
                missing = [s for s in seeds if s not in have]
                if missing or not seeds:
                    raise ConfigError(
                        f"--seed {', '.join(map(str, missing or seeds))}: this study's seeds "
                        f"are {', '.join(map(str, have)) or 'none'}"
                    )
        except BaseException:
            self.close()
            raise
        self.seeds = None if seeds is None else sorted(set(seeds))

    def _check_same_study(self) -> None:
        first = None
        seen: set[int] = set()
        for d, config in zip(self.run_dirs, self._configs, strict=True):
            rest = {
                k: v for k, v in config.items() if k not in StudyConfig.NOT_HASHED and k != "seeds"
            }
            if first is None:
                first = (d, rest)
            elif rest != first[1]:
                raise StoreError(f"{d} differs from {first[0]} in more than its seeds")
            seeds = set(config.get("seeds") or [])
            if seen & seeds:
                raise StoreError(f"{d} repeats seeds {sorted(seen & seeds)}")
            seen |= seeds

    def get_meta(self, key: str) -> str | None:
        """The first run's metadata; ``config`` with the seeds read (all runs' seeds, or
        the chosen ``seeds``)."""
        value = self.stores[0].get_meta(key)
        if key != "config" or (self.seeds is None and len(self.stores) == 1):
            return value
        config = dict(self._configs[0])
        config["seeds"] = self.seeds if self.seeds is not None else self.study_seeds
        return json.dumps(config, sort_keys=True)

    def models(self) -> list[ModelRow]:
        """The stored models of the seeds read, run after run."""
        return [m for st in self.stores for m in st.models() if self._keeps(m.seed)]

    def results(self) -> list[dict[str, Any]]:
        """The stored results of the seeds read, run after run."""
        return [r for st in self.stores for r in st.results() if self._keeps(r["seed"])]

    def _keeps(self, seed: int) -> bool:
        return self.seeds is None or seed in self.seeds

    def close(self) -> None:
        """Close every store."""
        for st in self.stores:
            st.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["RunReader", "StoredResults"]
