"""Evaluation reports: ``report.md`` with its pictures for one run, the comparison of several runs
(``segood eval --compare RUN_A RUN_B ...``), and the ``eval`` / ``fit-scores`` command-line entry
points (``add_*_arguments(parser)`` + ``run_*(args)``, wired by :mod:`segood.cli`).

Pictures come from :mod:`segood.metrics.plots`, imported inside the functions that draw, so
importing this module (e.g. to build the CLI parser) stays cheap.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping

SUBSETS = ("fov", "all")
PICTURES = {"roc": "roc_{points}.png", "hist": "score_histograms_{points}.png", "iou": "iou.png"}


# --------------------------------------------------------------------------- text


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def ood_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table: every score x {fov, all}: AUROC, AUPR, FPR95 (%), counts, binning error bounds."""
    lines = ["| score | points | AUROC ↑ | AUPR ↑ | FPR95 ↓ | ID pts | OOD pts | bin err AUROC / FPR95 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, per in metrics["ood"].items():
        bounds = (metrics.get("scores", {}).get(name) or {}).get("bin_error_bound") or {}
        for pts in SUBSETS:
            o, b = per[pts], bounds.get(pts, {})
            err = f"{b['auroc']:.1e} / {b['fpr95']:.1e}" if b else "n/a"
            lines.append(f"| {name} | {pts} | {_pct(o.get('auroc'))} | {_pct(o.get('aupr'))} | "
                         f"{_pct(o.get('fpr95'))} | {o['num_id']} | {o['num_ood']} | {err} |")
    return "\n".join(lines) + "\n"


def iou_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table of mIoU, accuracy and per-class IoU (%) for FOV and full-scan points."""
    m = metrics["miou"]
    lines = ["| class | " + " | ".join(SUBSETS) + " |", "|---|" + "---:|" * len(SUBSETS),
             "| **mIoU** | " + " | ".join(_pct(m[s]["miou"]) for s in SUBSETS) + " |",
             "| accuracy | " + " | ".join(_pct(m[s]["accuracy"]) for s in SUBSETS) + " |"]
    for cls in m["fov"]["iou"]:
        lines.append(f"| {cls} | " + " | ".join(_pct(m[s]["iou"][cls]) for s in SUBSETS) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(metrics: Mapping[str, Any], pictures: list[str]) -> str:
    """report.md of one evaluation."""
    op = metrics.get("operating_point")
    op_text = ("none (the split lacks ID or OOD points)" if not op else
               f"`{op['score']}` >= {op['threshold']:.6g} flags {100 * op['achieved_tpr']:.1f}% of OOD points "
               f"(target {100 * op['tpr']:.0f}%) at FPR {100 * op['fpr']:.1f}% on split `{op['split']}` "
               f"({op['points']} points); stored beside the checkpoint")
    conv = "\n".join(f"- **{k}**: {v}" for k, v in metrics["conventions"].items())
    fit = metrics.get("fit")
    fit_text = "" if not fit else f"\nFitted scores: {fit['points']} ID training points ({fit['path']}).\n"
    pics = "\n".join(f"![{Path(p).stem}]({p})" for p in pictures)
    return (
        f"# Evaluation of `{metrics['checkpoint']}`\n\n"
        f"checkpoint sha256 `{metrics['checkpoint_sha256']}`, config `{metrics['config']}`, synthesis "
        f"`{metrics['synthesis']}`, {metrics['num_scans']} scans of split `{metrics['split']['name']}` "
        f"(sequences {metrics['split']['sequences']}), OOD classes {metrics['ood_classes']}.\n{fit_text}\n"
        f"## OOD detection (percent)\n\n{ood_table(metrics)}\n"
        f"Operating point: {op_text}.\n\n## ID segmentation (percent)\n\n{iou_table(metrics)}\n"
        f"## Conventions\n\n{conv}\n\n## Pictures\n\n{pics}\n"
    )


# --------------------------------------------------------------------------- one run


def write_eval_report(out_dir: str | Path, metrics: Mapping[str, Any], hists: Mapping[str, Mapping[str, Any]],
                      binnings: Mapping[str, Any]) -> Path:
    """report.md plus ROC curves and ID-vs-OOD histograms (per subset, from the histograms) and IoU bars."""
    from segood.engine.checkpoint import write_text
    from segood.report import plots as rp

    out_dir = Path(out_dir)
    pictures = []
    for pts in SUBSETS:
        curves, panels = {}, {}
        for name in metrics["ood"]:
            auroc = metrics["ood"][name][pts].get("auroc")
            if name not in hists or auroc is None:
                continue
            h = hists[name][pts]
            curves[name] = (*rp.roc_from_counts(h.counts), auroc)
            panels[name] = rp.display_bins(h.counts, h.lo, h.hi, binnings[name].inverse)
        if curves:
            pictures.append(rp.plot_roc(curves, out_dir / PICTURES["roc"].format(points=pts),
                                        f"ROC, {pts} points (anomaly positive)").name)
            pictures.append(rp.plot_score_histograms(panels, out_dir / PICTURES["hist"].format(points=pts),
                                                     f"ID vs OOD scores, {pts} points").name)
    iou = {s: metrics["miou"][s]["iou"] for s in SUBSETS}
    pictures.append(rp.plot_iou(iou, out_dir / PICTURES["iou"], "ID per-class IoU").name)
    return write_text(out_dir / "report.md", report_markdown(metrics, pictures))


# --------------------------------------------------------------------------- several runs


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


def load_runs(runs: list[str], cfg: dict | None = None, progress: bool = True) -> dict[str, dict]:
    """``{label: metrics}`` for each RUN; a run folder with checkpoint.pt but no eval/metrics.json is
    evaluated first when a config is given."""
    from segood.engine.evaluate import evaluate

    out: dict[str, dict] = {}
    for run in runs:
        path = find_run_metrics(run)
        if path is None and cfg is not None and (Path(run) / "checkpoint.pt").is_file():
            evaluate(cfg, Path(run) / "checkpoint.pt", Path(run) / "eval", progress)
            path = Path(run) / "eval" / "metrics.json"
        if path is None:
            raise FileNotFoundError(f"{run}: expected a metrics.json, or a run folder with eval/metrics.json "
                                    "(or with checkpoint.pt, together with a CONFIG to evaluate it)")
        label = run_label(path)
        while label in out:
            label += "'"
        out[label] = json.loads(path.read_text())
    return out


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


def compare_runs(runs: list[str], out_dir: str | Path, cfg: dict | None = None, points: str = "fov",
                 progress: bool = True) -> dict[str, dict]:
    """Write comparison.png / comparison.md / comparison.json for several runs into ``out_dir``."""
    from segood.engine.checkpoint import write_json, write_text
    from segood.report.plots import plot_comparison

    loaded = load_runs(runs, cfg, progress)
    out_dir = Path(out_dir)
    rows = comparison_rows(loaded, points)
    plot_comparison(rows, {r: m["miou"][points]["miou"] for r, m in loaded.items()}, out_dir / "comparison.png",
                    f"{' vs '.join(loaded)} ({points} points)")
    write_text(out_dir / "comparison.md", comparison_markdown(loaded, points))
    write_json(out_dir / "comparison.json", {"points": points, "rows": rows,
                                             "runs": {r: m["checkpoint"] for r, m in loaded.items()}})
    return loaded


# --------------------------------------------------------------------------- command line


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set eval.knn_k=20 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``segood eval CONFIG --ckpt CKPT --out DIR`` or ``segood eval [CONFIG] --compare RUN ... --out DIR``."""
    p.add_argument("config", nargs="?", help="experiment config (optional with --compare)")
    p.add_argument("--ckpt", help="checkpoint to evaluate")
    p.add_argument("--out", required=True, help="folder for metrics.json, report.md and pictures")
    p.add_argument("--compare", nargs="+", metavar="RUN",
                   help="compare runs: run folders (RUN/eval/metrics.json; evaluated first if only "
                        "RUN/checkpoint.pt exists and CONFIG is given) or metrics.json paths")
    p.add_argument("--points", choices=SUBSETS, default="fov", help="subset shown in the comparison (default fov)")
    _add_common(p)


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """``segood fit-scores CONFIG --ckpt CKPT``: fit the feature-based scores, save them beside the checkpoint."""
    p.add_argument("config")
    p.add_argument("--ckpt", required=True)
    _add_common(p)


def format_metrics(m: Mapping[str, Any]) -> str:
    """Console summary of one evaluation."""
    from segood.engine.evaluate import headline

    lines = [f"ID mIoU: FOV {100 * m['miou']['fov']['miou']:.1f}  all {100 * m['miou']['all']['miou']:.1f}",
             f"{'score':14s} {'points':6s} {'AUROC':>7s} {'AUPR':>7s} {'FPR95':>7s}   (anomaly = positive, %)"]
    for score in m["ood"]:
        for pts in SUBSETS:
            h = headline(m, score, pts)
            lines.append(f"{score:14s} {pts:6s} {h['auroc']:7.1f} {h['aupr']:7.1f} {h['fpr95']:7.1f}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate one checkpoint, or compare several runs (``--compare``)."""
    from segood.config import ConfigError, load_config

    cfg = load_config(args.config, args.set) if args.config else None
    if args.compare:
        compare_runs(args.compare, args.out, cfg, args.points, not args.no_progress)
        print(f"comparison: {Path(args.out) / 'comparison.png'}  {Path(args.out) / 'comparison.md'}")
        return 0
    if cfg is None or not args.ckpt:
        raise ConfigError("give CONFIG and --ckpt CKPT, or --compare RUN ...")
    from segood.engine.evaluate import evaluate

    m = evaluate(cfg, args.ckpt, args.out, progress=not args.no_progress)
    print(format_metrics(m))
    print(f"metrics: {Path(args.out) / 'metrics.json'}  report: {Path(args.out) / 'report.md'}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """Fit the feature-based scores of one checkpoint on its config's train split."""
    from segood.config import load_config
    from segood.engine.evaluate import fit_scores

    path = fit_scores(load_config(args.config, args.set), args.ckpt, progress=not args.no_progress)
    print(f"fitted scores: {path}")
    return 0
