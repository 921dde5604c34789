"""The comparison of several evaluated runs (``segood eval --compare RUN_A RUN_B ...``): a sink,
metrics dicts in, comparison.md / .png / .json out. Loading (and evaluating) the runs is the
command's job (:mod:`segood.commands.eval`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping


def find_run_metrics(run: str | Path) -> Path | None:
    """metrics.json of a run given as a metrics.json path, a run folder (RUN/eval/metrics.json) or an eval folder."""
    run = Path(run)
    if run.is_file():
        return run
    for candidate in (run / "eval" / "metrics.json", run / "metrics.json"):
        if candidate.is_file():
            return candidate
    return None


def run_label(metrics_path: Path) -> str:
    """A run's name: the run folder (the parent of ``eval/``), the metrics file's folder, or the
    file's stem when it is not called metrics.json."""
    if metrics_path.name != "metrics.json":
        return metrics_path.stem
    folder = metrics_path.parent
    return folder.parent.name if folder.name == "eval" else folder.name


def comparison_rows(runs: Mapping[str, Mapping[str, Any]], points: str) -> dict[str, dict[str, dict[str, float]]]:
    """``rows[run][score] = {auroc, aupr, fpr95}`` in percent (NaN where undefined)."""
    return {r: {s: {k: 100 * per[points].get(k, math.nan) for k in ("auroc", "aupr", "fpr95")}
                for s, per in m["ood"].items()} for r, m in runs.items()}


def comparison_markdown(runs: Mapping[str, Mapping[str, Any]], points: str) -> str:
    """Table of every run x score on one subset, plus each run's mIoU and checkpoint."""
    rows = comparison_rows(runs, points)
    lines = [f"# Comparison ({points} points, percent; anomaly = positive)\n",
             "| run | score | AUROC ↑ | AUPR ↑ | FPR95 ↓ | ID mIoU ↑ |", "|---|---|---:|---:|---:|---:|"]
    for r, per in rows.items():
        miou = 100 * runs[r]["miou"][points]["miou"]
        for s, v in per.items():
            lines.append(f"| {r} | {s} | {v['auroc']:.1f} | {v['aupr']:.1f} | {v['fpr95']:.1f} | {miou:.1f} |")
    lines.append("\nRuns: " + ", ".join(f"`{r}` = {m['checkpoint']} (sha256 {m['checkpoint_sha256']}, "
                                        f"synthesis {m.get('synthesis')})" for r, m in runs.items()))
    return "\n".join(lines) + "\n\n![comparison](comparison.png)\n"


def write_comparison(runs: Mapping[str, Mapping[str, Any]], out_dir: str | Path, points: str = "fov") -> Path:
    """comparison.png / comparison.md / comparison.json of loaded runs (``{label: metrics}``) in ``out_dir``."""
    from segood.atomic import write_json, write_text
    from segood.report.plots import plot_comparison

    out_dir = Path(out_dir)
    rows = comparison_rows(runs, points)
    plot_comparison(rows, {r: m["miou"][points]["miou"] for r, m in runs.items()}, out_dir / "comparison.png",
                    f"{' vs '.join(runs)} ({points} points)")
    write_text(out_dir / "comparison.md", comparison_markdown(runs, points))
    return write_json(out_dir / "comparison.json", {"points": points, "rows": rows,
                                                    "runs": {r: m["checkpoint"] for r, m in runs.items()}})
