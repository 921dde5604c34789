"""The study summary: val-chosen headline score per configuration, test numbers as mean ± std over
seeds, paired differences to the reference configuration with 95 % intervals; Markdown, JSON and
one picture. Dicts in, files out (nothing here trains or evaluates).

The headline score is chosen with the same rule as the viewer's operating point
(:func:`segood.metrics.headline.headline_score`), on the seed-mean **val** metrics of
camera-visible points (the paper-comparable subset); the test split is only reported."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from segood.atomic import write_json, write_text
from segood.metrics.headline import headline_score
from segood.metrics.stats import paired_difference, summarize

__all__ = ["choose_scores", "summarize_study", "study_markdown", "write_study_report"]

POINTS = ("fov", "all")
METRICS = (("auroc", "AUROC ↑"), ("aupr", "AUPR ↑"), ("fpr95", "FPR95 ↓"), ("miou", "ID mIoU ↑"))
CHOOSE_ON = "fov"  # the headline score is chosen on val metrics of camera-visible points


def _value(metrics: Mapping[str, Any], score: str, points: str, key: str) -> float:
    """One number in percent (NaN when undefined)."""
    if key == "miou":
        return 100.0 * float(metrics["miou"][points]["miou"])
    v = metrics["ood"][score][points].get(key)
    return math.nan if v is None else 100.0 * float(v)


def mean_val_ood(seeds: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``ood[score][fov|all]`` of the **val** split, AUROC and FPR95 averaged over seeds (fractions)."""
    runs = [r["val"]["ood"] for r in seeds.values()]
    return {s: {p: {k: summarize([r[s][p].get(k, math.nan) for r in runs])["mean"] for k in ("auroc", "fpr95")}
                for p in POINTS} for s in runs[0]}


def choose_scores(results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, tuple[str, str]]:
    """Per configuration, (headline score, why), chosen on the seed-mean **val** FOV metrics."""
    chosen = {}
    for arm, seeds in results.items():
        synthesis = next(iter(seeds.values()))["val"].get("synthesis", "unknown")
        ood = {s: {p: {k: v for k, v in m.items() if not math.isnan(v)} for p, m in per.items()}
               for s, per in mean_val_ood(seeds).items()}
        chosen[arm] = headline_score(ood, synthesis, CHOOSE_ON)
    return chosen


def _per_seed(results: Mapping[int, Mapping[str, Any]], score: str, points: str, key: str,
              seeds: Sequence[int]) -> list[float]:
    return [_value(results[s]["test"], score, points, key) for s in seeds]


def summarize_study(results: Mapping[str, Mapping[int, Mapping[str, Any]]], reference: str | None) -> dict:
    """Everything the report shows, as plain data (also written as summary.json)."""
    why = choose_scores(results)
    chosen = {arm: name for arm, (name, _) in why.items()}
    common = sorted(set.intersection(*(set(v) for v in results.values()))) if results else []
    rows, every = {}, {}
    for arm, seeds in results.items():
        s_list = sorted(seeds)
        rows[arm] = {"score": chosen[arm], "chosen_by": why[arm][1], "seeds": s_list, "values": {
            p: {k: _per_seed(seeds, chosen[arm], p, k, s_list) for k, _ in METRICS} for p in POINTS}}
        every[arm] = {score: {p: {k: summarize(_per_seed(seeds, score, p, k, s_list)) for k, _ in METRICS[:3]}
                              for p in POINTS} | {"val_fov_auroc": summarize(
                                  [_value(seeds[s]["val"], score, "fov", "auroc") for s in s_list])}
                      for score in next(iter(seeds.values()))["test"]["ood"]}
    for row in rows.values():
        row["summary"] = {p: {k: summarize(v) for k, v in row["values"][p].items()} for p in POINTS}
    diffs = {}
    if reference in results:
        ref = results[reference]
        for arm, seeds in results.items():
            if arm == reference:
                continue
            paired = [s for s in common if s in seeds and s in ref]
            diffs[arm] = {p: {k: paired_difference(_per_seed(seeds, chosen[arm], p, k, paired),
                                                   _per_seed(ref, chosen[reference], p, k, paired),
                                                   higher_is_better=k != "fpr95")
                              for k, _ in METRICS} for p in POINTS}
    return {"reference": reference, "chosen_on": f"val split, {CHOOSE_ON} points, mean over seeds", "rows": rows,
            "diffs": diffs,
            "every_score": every}


def _pm(s: Mapping[str, float]) -> str:
    """``mean ± std`` over seeds; the mean alone for a single seed (no spread to show)."""
    if math.isnan(s["mean"]):
        return "n/a"
    return f"{s['mean']:.1f}" if s["n"] == 1 else f"{s['mean']:.1f} ± {s['std']:.1f}"


def _diff(d: Mapping[str, float]) -> str:
    if math.isnan(d["mean"]):
        return "n/a"
    ci = "" if math.isnan(d["lo"]) else f" [{d['lo']:+.1f}, {d['hi']:+.1f}]"
    return f"{d['mean']:+.1f}{ci} ({d['wins']}/{d['n']})"


def main_table(summary: Mapping[str, Any]) -> str:
    """Headline table: per configuration its val-chosen score, test mean ± std over seeds."""
    head = "| configuration | score (chosen on val) | seeds | " + " | ".join(
        f"{p.upper()} {label}" for p in POINTS for _, label in METRICS) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * (len(POINTS) * len(METRICS))]
    for arm, row in summary["rows"].items():
        cells = [_pm(row["summary"][p][k]) for p in POINTS for k, _ in METRICS]
        lines.append(f"| {arm} | {row['score']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def diff_table(summary: Mapping[str, Any]) -> str:
    """Paired differences to the reference: mean [95 % t-interval] (seeds where the arm is better)."""
    if not summary["diffs"]:
        return ""
    lines = [f"| configuration − {summary['reference']} | " + " | ".join(
        f"{p.upper()} Δ{label.split()[0]}" for p in POINTS for _, label in (METRICS[0], METRICS[2], METRICS[3])) + " |",
        "|---|" + "---:|" * (len(POINTS) * 3)]
    for arm, d in summary["diffs"].items():
        lines.append(f"| {arm} | " + " | ".join(_diff(d[p][k]) for p in POINTS for k in ("auroc", "fpr95", "miou"))
                     + " |")
    return "\n".join(lines) + "\n"


def every_score_table(summary: Mapping[str, Any]) -> str:
    lines = ["| configuration | score | val FOV AUROC | test FOV AUROC | test FOV FPR95 | test all AUROC | "
             "test all FPR95 |", "|---|---|---:|---:|---:|---:|---:|"]
    for arm, scores in summary["every_score"].items():
        for score, s in scores.items():
            mark = " **(chosen)**" if summary["rows"][arm]["score"] == score else ""
            lines.append(f"| {arm} | {score}{mark} | {_pm(s['val_fov_auroc'])} | {_pm(s['fov']['auroc'])} | "
                         f"{_pm(s['fov']['fpr95'])} | {_pm(s['all']['auroc'])} | {_pm(s['all']['fpr95'])} |")
    return "\n".join(lines) + "\n"


def study_markdown(summary: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    conv = ("Test split only; each configuration's headline score chosen on the val split (FOV points, mean "
            "over seeds; a model trained with outliers keeps its anomaly head unless another score has both a "
            "higher AUROC and a lower FPR95; without outliers: the best post-hoc score by AUROC), never on the "
            "reported split. Anomaly = positive; unlabeled points excluded; percent; "
            "mean ± std over seeds (std with ddof=1). FOV = camera-visible points, ALL = full scan. Δ: paired "
            "by seed (same data, same seed), mean [95 % Student-t interval] (seeds where the configuration is "
            "higher; for FPR95 lower is better, so a negative Δ is a win).")
    ctx = "\n".join(f"- {k}: {v}" for k, v in context.items())
    return ("# segood study\n\n" + conv + "\n\n" + ctx + "\n\n## Headline (test split)\n\n" + main_table(summary)
            + ("\n## Paired difference to the reference (test split)\n\n" + diff_table(summary)
               if summary["diffs"] else "")
            + "\n![study](study.png)\n\n## Every score\n\n" + every_score_table(summary))


def plot_study(summary: Mapping[str, Any], path: Path) -> Path:
    """Per configuration: each seed's test AUROC and FPR95 (dots) and the mean (bar), FOV and ALL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["rows"])
    fig, axes = plt.subplots(1, 4, figsize=(4 + 2.2 * len(arms), 4.2), squeeze=False)
    for ax, (p, k) in zip(axes[0], [(p, k) for p in POINTS for k in ("auroc", "fpr95")]):
        for i, arm in enumerate(arms):
            vals = summary["rows"][arm]["values"][p][k]
            ax.bar(i, summary["rows"][arm]["summary"][p][k]["mean"], color="#9ecae1", width=0.6)
            ax.scatter([i] * len(vals), vals, color="#08519c", s=14, zorder=3)
        ax.set_xticks(range(len(arms)), [f"{a}\n({summary['rows'][a]['score']})" for a in arms], rotation=35,
                      ha="right", fontsize=7)
        ax.set_title(f"test {p.upper()} {k.upper()} ({'↑' if k == 'auroc' else '↓'})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study_report(out_dir: Path, summary: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """summary.md, summary.json and study.png in ``out_dir``; returns the console text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", {"context": dict(context), **summary})
    plot_study(summary, out_dir / "study.png")
    write_text(out_dir / "summary.md", study_markdown(summary, context))
    return main_table(summary) + ("\n" + diff_table(summary) if summary["diffs"] else "")
