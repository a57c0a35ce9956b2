"""Stored reports of a validation run: the result JSON, a markdown table and GX Data Docs.

Kept apart from :meth:`Validator.validate` so the pre-merge hook pays only for the check; the
training flow and ``lakeloop validate`` call :func:`write_report` when they want files. GX builds
its site in a local folder; the training flow also keeps a copy in the store (a local folder or an
object store, :mod:`lakeloop.stores.objects`) for whoever looks after the run's pod is gone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lakeloop.dataset import DatasetSpec
from lakeloop.stores.objects import ObjectStore
from lakeloop.validation.checks import suite_name
from lakeloop.validation.results import ValidationResult

if TYPE_CHECKING:  # importing great_expectations costs seconds: only who writes reports pays
    from great_expectations.alias_types import JSONValues

SITE = "lakeloop"
"""Name of the Data Docs site built in the report folder."""


def write_report(
    result: ValidationResult,
    folder: Path,
    *,
    spec: DatasetSpec,
    store: ObjectStore | None = None,
) -> dict[str, Path]:
    """Store ``result`` in ``folder``: JSON, markdown and Great Expectations' HTML Data Docs;
    with ``store``, copy them there too.

    Returns the written files by kind: ``json``, ``markdown``, ``data_docs`` (the site's index
    page) and ``html`` (the page of this validation run), all in ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "json": folder / "validation.json",
        "markdown": folder / "validation.md",
    }
    written["json"].write_text(json.dumps(result.to_json(), indent=2, default=str))
    written["markdown"].write_text(result.to_markdown())
    docs = folder / "data_docs"
    # A result over several stored tables has one GX result per table: one page each, named by
    # the table; the page shown first is the first table that failed (else the last one).
    raws = result.tables or {spec.name: result.raw}
    written["data_docs"] = build_data_docs(raws, docs, spec=spec)
    first = (result.failing_tables or list(raws)[-1:] or [spec.name])[0]
    written["html"] = _run_page(docs, batch=_batch_name(first))
    if store is not None:
        store.put_folder(folder)
    return written


def build_data_docs(
    raws: dict[str, dict[str, JSONValues]], folder: Path, *, spec: DatasetSpec
) -> Path:
    """Build a Great Expectations Data Docs site with one page per validation result (by the
    table it judged); returns index.html.

    A throwaway ephemeral context with a filesystem site is enough: the results are put in its
    validation store and GX's own site builder renders the pages and copies its static assets.
    """
    import great_expectations as gx  # noqa: PLC0415 - heavy, paid only by who writes reports
    from great_expectations.core import ExpectationSuiteValidationResult  # noqa: PLC0415
    from great_expectations.core.run_identifier import RunIdentifier  # noqa: PLC0415
    from great_expectations.data_context.types.resource_identifiers import (  # noqa: PLC0415
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        SITE,
        {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(folder.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    run_id = RunIdentifier(run_name="lakeloop-validate", run_time=datetime.now(UTC))
    for table, raw in raws.items():
        if not raw:
            continue  # a table that could not be parsed has no GX result, only its finding
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name(spec)),
            run_id=run_id,
            batch_identifier=_batch_name(table),
        )
        # The stored JSON form goes back in as it is: GX's signature names the objects it would
        # build, but its store serialises results given as their JSON dicts just the same.
        stored = ExpectationSuiteValidationResult(**raw)  # type: ignore[arg-type]
        context.validation_results_store.set(key, stored)
    context.build_data_docs(site_names=[SITE])
    return folder / "index.html"


def _batch_name(table: str) -> str:
    # A path becomes a file name in the site: keep it readable and flat.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in table)


def _run_page(docs: Path, *, batch: str) -> Path:
    # The site builder nests the page as validations/<suite>/<run>/<time>/<batch>.html.
    pages = sorted((docs / "validations").rglob("*.html"))
    named = [page for page in pages if page.stem == batch]
    return (named or pages or [docs / "index.html"])[-1]
