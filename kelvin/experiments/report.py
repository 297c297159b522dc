"""`kelvin report D`: the report of a comparison folder (or of one training run) from the files it holds.

A comparison folder (written by `kelvin compare`, see kelvin/experiments/runner.py) gets:

    report.md     summary table (final accuracy per arm, mean and 95% t-interval over seeds, paired difference to the
                  best fixed-temperature arm), per-seed numbers, the evaluation at every temperature, a training
                  table, and a one-paragraph statement of the result generated from those numbers
    results.json  every number: per arm, per seed, per evaluation setting (the table's means are means of these)
    *.png         reward / held-out accuracy / temperature against step per arm (bands over seeds), TAMPO's
                  meta-policy as a heat map, IntroLLM's tau against token entropy, evaluation bars

A run folder (metrics.jsonl) gets training.png (reward, accuracy, temperature against step), plus the TAMPO and
IntroLLM plots when the run logged their metrics, and a short report.md.

The numbers are typed (results.py), the words and tables rendered from them (rendering.py), the PNGs drawn from
them (plots.py); this module reads the folder and writes the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kelvin.experiments.plots import comparison_plots, run_plots
from kelvin.experiments.recipe import COMPARISON_FILE
from kelvin.experiments.rendering import render_markdown, run_markdown, summary_rows, text_table
from kelvin.experiments.results import (
    ComparisonResults,
    TrainingSummary,
    best_fixed_arm,
    collect_numbers,
    read_metrics,
)
from kelvin.experiments.statement import statement

__all__ = ["ComparisonReport", "best_fixed_arm", "collect_results", "summary_rows", "write_report"]


@dataclass
class ComparisonReport:
    root: Path
    results: ComparisonResults
    markdown: str
    summary_text: str  # the summary table as aligned plain text, for the terminal
    files: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.root / "report.md"


def collect_results(root: Path) -> ComparisonResults:
    """Every number of the comparison in `root`, and the statement made from them."""
    results = collect_numbers(root)
    results.statement = statement(results)
    return results


def write_comparison_report(root: str | Path) -> ComparisonReport:
    """Write report.md, results.json and the PNGs of a comparison folder; returns them."""
    root = Path(root)
    if not (root / COMPARISON_FILE).is_file():
        raise FileNotFoundError(f"{root} holds no {COMPARISON_FILE}: it is not a comparison folder (kelvin compare).")
    results = collect_results(root)
    files = comparison_plots(root, results)
    markdown = render_markdown(results, files)
    (root / "report.md").write_text(markdown)
    (root / "results.json").write_text(json.dumps(results.to_dict(), indent=2))
    return ComparisonReport(
        root=root,
        results=results,
        markdown=markdown,
        summary_text=text_table(*summary_rows(results)),
        files=[root / "report.md", root / "results.json", *files],
    )


def write_run_report(folder: str | Path) -> list[Path]:
    """Plots of one training run (reward, accuracy, temperature against step; TAMPO / IntroLLM when logged) and a
    short report.md."""
    folder = Path(folder)
    rows = read_metrics(folder)
    if not rows:
        raise FileNotFoundError(f"{folder} has no metrics.jsonl (or it is empty): it is not a training run folder.")
    made = run_plots(folder, rows)
    (folder / "report.md").write_text(run_markdown(folder.name, TrainingSummary.of_run(rows), made))
    return [folder / "report.md", *made]


def write_report(path: str | Path) -> ComparisonReport | list[Path]:
    """A comparison folder's report, or a training run's plots, whichever `path` is."""
    path = Path(path)
    if (path / COMPARISON_FILE).is_file():
        return write_comparison_report(path)
    if (path / "metrics.jsonl").is_file():
        return write_run_report(path)
    raise FileNotFoundError(
        f"{path} is neither a comparison folder ({COMPARISON_FILE}, from kelvin compare) nor a training run "
        "(metrics.jsonl, from kelvin train)."
    )
