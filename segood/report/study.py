"""The study summary: val-chosen headline score per configuration, test numbers as mean ± std over
seeds, paired differences to the reference configuration with 95 % intervals, per-kind rows, the
shortcut monitor's pair and the ablation table (:mod:`segood.report.study_ablation`); Markdown, JSON and
one picture. Dicts in, files out (nothing here trains or evaluates).

The headline score is chosen with the same rule as the viewer's operating point
(:func:`segood.metrics.headline.headline_score`), on the seed-mean **val** metrics of
camera-visible points (the paper-comparable subset); the test split is only reported."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from segood.atomic import write_json, write_text
from segood.config import ConfigError
from segood.engine.fit import unavailable_scores
from segood.engine.monitor import SATURATED, shortcut_warning
from segood.metrics.headline import headline_score
from segood.metrics.stats import paired_difference, summarize
from segood.ood.scores import SCORES
from segood.report.study_ablation import summarize_ablation

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


def choose_scores(results: Mapping[str, Mapping[int, Mapping[str, Any]]],
                  refused: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, tuple[str, str]]:
    """Per configuration, (headline score, why), chosen on the seed-mean **val** FOV metrics among its scores
    not ``refused[arm]`` (:func:`skipped_scores`)."""
    chosen = {}
    for arm, seeds in results.items():
        synthesis = next(iter(seeds.values()))["val"].get("synthesis", "unknown")
        ood = {s: {p: {k: v for k, v in m.items() if not math.isnan(v)} for p, m in per.items()}
               for s, per in mean_val_ood(seeds).items() if s not in (refused or {}).get(arm, {})}
        chosen[arm] = headline_score(ood, synthesis, CHOOSE_ON)
    return chosen


def _per_seed(results: Mapping[int, Mapping[str, Any]], score: str, points: str, key: str,
              seeds: Sequence[int]) -> list[float]:
    return [_value(results[s]["test"], score, points, key) for s in seeds]


def summarize_study(results: Mapping[str, Mapping[int, Mapping[str, Any]]], reference: str | None,
                    arms: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Everything the report shows, as plain data (also written as summary.json). ``results[arm][seed]``:
    the run's ``val`` / ``test`` metrics and optionally its ``run`` facts
    (:func:`segood.engine.study.run_facts`); ``arms[arm]``: its ``config``, ``chain`` and ``command``
    for the ablation table."""
    refused = skipped_scores(results)
    why = choose_scores(results, refused)
    chosen = {arm: name for arm, (name, _) in why.items()}
    rows, every = {}, {}
    for arm, seeds in results.items():
        s_list = sorted(seeds)
        rows[arm] = {"score": chosen[arm], "chosen_by": why[arm][1], "seeds": s_list, "values": {
            p: {k: _per_seed(seeds, chosen[arm], p, k, s_list) for k, _ in METRICS} for p in POINTS}}
        every[arm] = {score: {p: {k: summarize(_per_seed(seeds, score, p, k, s_list)) for k, _ in METRICS[:3]}
                              for p in POINTS} | {"val_fov_auroc": summarize(
                                  [_value(seeds[s]["val"], score, "fov", "auroc") for s in s_list])}
                      for score in next(iter(seeds.values()))["test"]["ood"] if score not in refused.get(arm, {})}
    for row in rows.values():
        row["summary"] = {p: {k: summarize(v) for k, v in row["values"][p].items()} for p in POINTS}
    diffs = {}
    if reference in results:
        ref = results[reference]
        for arm, seeds in results.items():
            if arm == reference:
                continue
            paired = sorted(set(seeds) & set(ref))  # this configuration's seeds the reference ran too
            diffs[arm] = {p: {k: paired_difference(_per_seed(seeds, chosen[arm], p, k, paired),
                                                   _per_seed(ref, chosen[reference], p, k, paired),
                                                   higher_is_better=k != "fpr95")
                              for k, _ in METRICS} for p in POINTS}
    return {"reference": reference, "chosen_on": f"val split, {CHOOSE_ON} points, mean over seeds", "rows": rows,
            "diffs": diffs,
            "every_score": every, "kinds": summarize_kinds(results, chosen, reference),
            "monitor": summarize_monitor(results, chosen),
            "ablation": summarize_ablation(results, rows, reference, arms),
            "skipped_scores": refused}


def skipped_scores(results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, dict[str, str]]:
    """Per configuration, the scores that cannot run on (or mean nothing for) its model, with the reason
    (``Score.why_not``): those its evaluations skipped (``metrics.json`` ``skipped_scores``) and those an
    older evaluation still computed that its run's config.yaml now refuses (left out of every table);
    configurations with none are left out."""
    out: dict[str, dict[str, str]] = {}
    for arm, seeds in results.items():
        for r in seeds.values():
            for split in ("val", "test"):
                out.setdefault(arm, {}).update(r[split].get("skipped_scores") or {})
            config = (r.get("run") or {}).get("config")
            if config:
                scored = {**config["eval"], "scores": [n for n in r["test"]["ood"] if n in SCORES]}
                try:
                    out[arm].update(unavailable_scores(scored, config, int(config["model"]["num_classes"])))
                except ConfigError:  # an older config's score options: nothing is refused on its account
                    pass
    return {arm: why for arm, why in out.items() if why}


def _monitor_records(run: Mapping[str, Any]) -> list[dict]:
    """A run's shortcut-monitor records: its ``monitor.jsonl`` (run facts), else those its test metrics carry."""
    return (run.get("run") or {}).get("monitor") or (run["test"].get("monitor") or {}).get("records") or []


def summarize_monitor(results: Mapping[str, Mapping[int, Mapping[str, Any]]], chosen: Mapping[str, str]) -> dict:
    """Per configuration, the shortcut monitor's last record for its headline score: AUROC (%) on the synthetic
    outliers of the last training step and on the val split's real OOD points (FOV and all points), mean ±
    std over seeds; the seeds whose headline score showed a shortcut at some monitor step (synthetic AUROC
    saturated while the real FOV AUROC fell since the step before); ``flagged`` when any did. Runs without
    records are left out."""
    out = {}
    for arm, seeds in results.items():
        runs = {s: recs for s, r in sorted(seeds.items()) if (recs := _monitor_records(r))}
        if not runs:
            continue
        last = {s: recs[-1]["scores"].get(chosen[arm], {}) for s, recs in runs.items()}
        pct = lambda v: math.nan if v is None else 100.0 * v  # noqa: E731
        mine = [[{"step": r["step"], "scores": {chosen[arm]: r["scores"].get(chosen[arm], {})}} for r in recs]
                for recs in runs.values()]  # the headline score's pair only
        flagged = [s for s, recs in zip(runs, mine) if any(shortcut_warning(a, b) for a, b in zip(recs, recs[1:]))]
        out[arm] = {"score": chosen[arm], "step": [recs[-1]["step"] for recs in runs.values()],
                    "records": [len(recs) for recs in runs.values()],
                    **{side: summarize([pct(v.get(side)) for v in last.values()])
                       for side in ("synthetic", "real_fov", "real_all")},
                    "flagged_seeds": flagged, "flagged": bool(flagged)}
    return out


KIND_METRICS = ("auroc", "fpr95")


def _kind_rows(results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[tuple[str, str, str, str]]:
    """(row label, block, key, family) of every kind, then every family, in the runs' test metrics."""
    family: dict[str, str] = {}
    fams: set[str] = set()
    for seeds in results.values():
        for r in seeds.values():
            family.update(r["test"].get("ood_kind_family", {}))
            fams |= {f for per in r["test"].get("ood_families", {}).values() for f in per}
    rows = [(k, "ood_kinds", k, family[k]) for k in sorted(family, key=lambda k: (family[k], k))]
    return rows + [(f"all {f}", "ood_families", f, f) for f in sorted(fams)]


def _kind_per_seed(seeds: Mapping[int, Mapping[str, Any]], score: str, block: str, key: str, points: str,
                   metric: str, order: Sequence[int]) -> list[float]:
    out = []
    for s in order:
        v = seeds[s]["test"].get(block, {}).get(score, {}).get(key, {}).get(points, {}).get(metric)
        out.append(math.nan if v is None else 100.0 * float(v))
    return out


def summarize_kinds(results: Mapping[str, Mapping[int, Mapping[str, Any]]], chosen: Mapping[str, str],
                    reference: str | None) -> dict:
    """Per configuration and kind of OOD object (and family): its headline score's test AUROC / FPR95 (each
    kind's points against every ID point), mean ± std over seeds, and the paired difference to the
    reference; empty when the data has no per-point kinds."""
    rows = _kind_rows(results)
    out: dict[str, dict] = {}
    for arm, seeds in results.items():
        order = sorted(seeds)
        out[arm] = {}
        for label, block, key, fam in rows:
            vals = {p: {m: _kind_per_seed(seeds, chosen[arm], block, key, p, m, order) for m in KIND_METRICS}
                    for p in POINTS}
            entry = {"family": fam, "values": vals,
                     "summary": {p: {m: summarize(v) for m, v in per.items()} for p, per in vals.items()}}
            if reference in results and arm != reference:
                paired = sorted(set(seeds) & set(results[reference]))
                entry["diff"] = {p: {m: paired_difference(
                    _kind_per_seed(seeds, chosen[arm], block, key, p, m, paired),
                    _kind_per_seed(results[reference], chosen[reference], block, key, p, m, paired),
                    higher_is_better=m != "fpr95") for m in KIND_METRICS} for p in POINTS}
            out[arm][label] = entry
    return out if rows else {}


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
    head = "| configuration | score (chosen on val) | shaped by the outlier training? | seeds | " + " | ".join(
        f"{p.upper()} {label}" for p in POINTS for _, label in METRICS) + " |"
    lines = [head, "|---|---|---|---:|" + "---:|" * (len(POINTS) * len(METRICS))]
    for arm, row in summary["rows"].items():
        cells = [_pm(row["summary"][p][k]) for p in POINTS for k, _ in METRICS]
        shaped = {True: "yes", False: "no", None: "?"}[summary["ablation"][arm]["provenance"]["shaped"]]
        lines.append(f"| {arm} | {row['score']} | {shaped} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
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


def kinds_table(summary: Mapping[str, Any]) -> str:
    """Per configuration and kind of OOD object: test AUROC / FPR95 of its headline score, and the paired
    difference to the reference (configurations other than the reference)."""
    kinds = summary.get("kinds") or {}
    if not kinds:
        return ""
    ref = summary["reference"]
    head = [f"{p.upper()} {label}" for p in POINTS for label in ("AUROC ↑", "FPR95 ↓")]
    delta = [f"{p.upper()} Δ{label} vs {ref}" for p in POINTS for label in ("AUROC", "FPR95")]
    lines = ["| configuration (score) | kind | family | " + " | ".join(head + delta) + " |",
             "|---|---|---|" + "---:|" * (len(head) + len(delta))]
    for arm, per in kinds.items():
        for label, e in per.items():
            cells = [_pm(e["summary"][p][m]) for p in POINTS for m in KIND_METRICS]
            cells += [_diff(e["diff"][p][m]) if "diff" in e else "" for p in POINTS for m in KIND_METRICS]
            lines.append(f"| {arm} ({summary['rows'][arm]['score']}) | {label} | {e['family']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def monitor_table(summary: Mapping[str, Any]) -> str:
    """Per configuration: the monitor's final AUROC pair of its headline score and the flagged seeds; the
    configurations whose runs have no monitor record are named below the table."""
    mon = summary.get("monitor") or {}
    missing = [arm for arm in summary["rows"] if arm not in mon]
    lines = ["| configuration | score | synthetic outliers AUROC (last step) | real val FOV AUROC (last step) | "
             "real val ALL AUROC (last step) | monitor steps | shortcut flag (seeds) |", "|---|---|---:|---:|---:|---:|---|"]
    for arm, m in mon.items():
        flag = ("**SHORTCUT** (" + ", ".join(map(str, m["flagged_seeds"])) + ")") if m["flagged_seeds"] else "no"
        steps = min(m.get("records") or [0])
        lines.append(f"| {arm} | {m['score']} | {_pm(m['synthetic'])} | {_pm(m['real_fov'])} | "
                     f"{_pm(m.get('real_all', {'mean': math.nan}))} | {steps} | {flag} |")
    text = "\n".join(lines) + "\n" if mon else ""
    if mon and all(n < 2 for m in mon.values() for n in m.get("records") or [0]):
        text += ("\nEvery run has one monitor record (train.val_every 0: the end of training only), so no fall of the "
                 "real AUROC can be seen and nothing can be flagged.\n")
    if missing:
        text += (f"\nNo monitor records for {', '.join(missing)} (no monitor.jsonl in the run folders: trained "
                 "before the shortcut monitor existed).\n")
    return text


def _differences_text(arm: str, entry: Mapping[str, Any], reference: str | None) -> str:
    if arm == reference:
        return "(reference)"
    diff = entry["differences"]
    if diff is None:
        return "n/a (no config.yaml)"
    return "; ".join(f"{k}: {v[0]}" for k, v in diff.items()) or "none"


def _minutes(s: Mapping[str, float] | None) -> str:
    if s is None or math.isnan(s["mean"]):
        return "n/a"
    return f"{s['mean'] / 60:.1f}" if s["n"] == 1 else f"{s['mean'] / 60:.1f} ± {s['std'] / 60:.1f}"


def ablation_table(summary: Mapping[str, Any]) -> str:
    """The ablation table (every configuration, what differs from the reference, its time and headline
    numbers), then each configuration's command."""
    ablation, reference = summary["ablation"], summary["reference"]
    lines = ["| configuration | config (inherits) | differs from the reference (resolved config.yaml) | seeds | "
             "training min / run | headline score | shaped by the outlier training? | FOV AUROC ↑ | FOV FPR95 ↓ | "
             "ALL AUROC ↑ | ALL FPR95 ↓ | FOV ID mIoU ↑ |", "|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for arm, e in ablation.items():
        chain = " < ".join(e["chain"]) if e["chain"] else (e["config"] or "?")
        h = e["headline"]
        nums = [_pm(h["fov"]["auroc"]), _pm(h["fov"]["fpr95"]), _pm(h["all"]["auroc"]), _pm(h["all"]["fpr95"]),
                _pm(h["fov"]["miou"])]
        lines.append(f"| {arm} | {chain} | {_differences_text(arm, e, reference)} | "
                     f"{' '.join(map(str, e['seeds']))} | {_minutes(e['train_seconds'])} | {e['score']} | "
                     f"{e['provenance']['text']} | " + " | ".join(nums) + " |")
    commands = [f"- {arm}: `{e['command']}`" for arm, e in ablation.items() if e["command"]]
    return "\n".join(lines) + "\n" + ("\nCommands (one configuration each; the same --out resumes and skips "
                                      "finished runs):\n\n" + "\n".join(commands) + "\n" if commands else "")


def skipped_text(summary: Mapping[str, Any]) -> str:
    """One line per configuration naming the scores its evaluations skipped and why."""
    return "".join(f"- {arm}: " + "; ".join(f"{n} ({why})" for n, why in per.items()) + "\n"
                   for arm, per in (summary.get("skipped_scores") or {}).items())


def study_markdown(summary: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    conv = ("Test split only; each configuration's headline score chosen on the val split (FOV points, mean "
            "over seeds; a model trained with outliers keeps its anomaly head unless another score has both a "
            "higher AUROC and a lower FPR95; without outliers: the best post-hoc score by AUROC), never on the "
            "reported split. Anomaly = positive; unlabeled points excluded; percent; "
            "mean ± std over seeds (std with ddof=1). FOV = camera-visible points, ALL = full scan. Δ: paired "
            "by seed (same data, same seed), mean [95 % Student-t interval] (seeds where the configuration is "
            "higher; for FPR95 lower is better, so a negative Δ is a win).")
    ctx = "\n".join(f"- {k}: {v}" for k, v in context.items())
    kinds = ("\n## Per kind of OOD object (test split; each kind's points against every ID point)\n\n"
             + (kinds_table(summary) if summary.get("kinds") else
                "No per-kind metrics in these runs' metrics.json (evaluated before per-kind results were recorded, "
                "or the data has no per-point OOD kinds).\n"))
    monitor = ("\n## Shortcut monitor (val split, headline score)\n\nAUROC of the headline score on the last "
               "training step's synthetic outliers against its ID points, next to its AUROC on the val split's real "
               f"OOD points, mean ± std over seeds; a seed is flagged when its synthetic AUROC was >= "
               f"{100 * SATURATED:.0f} while the real FOV one fell between two monitor steps. n/a: no synthesis, or "
               "a score the monitor does not compute (fitted scores).\n\n" + monitor_table(summary))
    ablation = ("\n## Ablation (every configuration, its command and its time)\n\nDifferences: the resolved "
                "config keys (each run's config.yaml; seed and data root left out) whose value differs from the "
                "reference configuration's, with this configuration's value. Training time: run_summary.json "
                "seconds, mean ± std over runs, measured under whatever load the study ran with. Shaped by the "
                "outlier training: the anomaly head trained on the synthetic outliers, or a logit score of a model "
                "trained with an outlier loss (yes), against a post-hoc score (no).\n\n" + ablation_table(summary))
    skipped = ("\n## Scores skipped\n\n" + skipped_text(summary)) if summary.get("skipped_scores") else ""
    return ("# segood study\n\n" + conv + "\n\n" + ctx + "\n\n## Headline (test split)\n\n" + main_table(summary)
            + ("\n## Paired difference to the reference (test split)\n\n" + diff_table(summary)
               if summary["diffs"] else "")
            + kinds + monitor + ablation + skipped
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
