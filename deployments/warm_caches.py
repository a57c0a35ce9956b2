"""Imported last by the warm parent (:data:`deployments.warm.PRELOADED`): fills, once, the
per-process caches that every forked flow run would otherwise fill again on its first call.

Importing a module is the only thing the ``forkserver`` does before it forks (its preload list
holds module names), so the filling happens at import time, here and nowhere else.

- MLflow's map from importable modules to installed distributions
  (``mlflow.utils.requirements_utils``), which ``log_model`` builds on its first call in a
  process to check the model's pinned requirements against the environment: it reads the
  metadata and file list of every installed distribution. Measured on the 2-core build machine
  (a real MLflow server, 10,000 rows, a process that had imported :data:`PRELOADED`): a run's
  first ``log_trained`` 3.77 s, of which this map 1.83 s; with the map filled first, 1.33 s.
"""

from __future__ import annotations

from mlflow.utils import requirements_utils


def fill() -> None:
    """Build MLflow's module-to-distribution map now (a no-op once it exists). MLflow's private
    helper, looked up so that a release without it costs the seconds again, not the warm parent
    (``tests/integration/test_forked_runs.py`` fails then)."""
    build = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if build is not None:
        build()


def filled() -> bool:
    """Whether this process already holds the map (a forked run inherits its parent's)."""
    return getattr(requirements_utils, "_MODULES_TO_PACKAGES", None) is not None


fill()
