"""docs/sequence-models.md's measured tables are what benchmarks/sequence_models.py --markdown
prints of the CSVs committed beside them (results/sequence-models/): a figure edited by hand or
a rerun not carried into the doc fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "sequence-models"


def benchmark():
    spec = importlib.util.spec_from_file_location(
        "sequence_models", REPO / "benchmarks" / "sequence_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tables(markdown: str) -> list[str]:
    """The tables of ``markdown``, each as its lines joined."""
    return [block for block in markdown.strip().split("\n\n") if block.startswith("|")]


def missing_tables(doc: str, results: Path) -> list[str]:
    """The first line of each table of ``results`` that ``doc`` does not hold verbatim."""
    found = tables(benchmark().markdown(results))
    assert len(found) == 3  # estimates, fits, depth: the scan sees what it is meant to check
    return [table.splitlines()[0] for table in found if table not in doc]


def test_the_docs_tables_are_the_committed_results():
    doc = (REPO / "docs" / "sequence-models.md").read_text(encoding="utf-8")
    assert missing_tables(doc, RESULTS) == []


def test_a_figure_changed_in_the_results_is_a_table_the_doc_lacks(tmp_path):
    doc = (REPO / "docs" / "sequence-models.md").read_text(encoding="utf-8")
    for name in ("estimates.csv", "fits.csv", "depth.csv"):
        (tmp_path / name).write_text((RESULTS / name).read_text())
    with (tmp_path / "depth.csv").open("a") as file:  # one more row: a changed depth table
        file.write("48,bp,1024,8,rtx-4090,estimated,1073741824,1073741824,1.0\n")
    missing = missing_tables(doc, tmp_path)
    assert len(missing) == 1 and missing[0].startswith("| depth |")
