"""The report of one evaluation: ``report.md`` with its pictures, and the console summary.

A sink: metrics and histograms in, Markdown and pictures out; it never runs the pipeline (the
``eval`` command, :mod:`segood.commands.eval`, joins the pass and this writer). Pictures come from
:mod:`segood.report.plots`, imported inside the functions that draw, so importing this module
(e.g. to build the CLI parser) stays cheap.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

SUBSETS = ("fov", "all")
PICTURES = {"roc": "roc_{points}.png", "hist": "score_histograms_{points}.png", "iou": "iou.png"}


# --------------------------------------------------------------------------- text


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _protocol_rows(metrics: Mapping[str, Any]):
    """(protocol, ood, bounds-by-subset or None) for segood's own numbers, then each reference protocol's."""
    bounds = {n: (metrics.get("scores", {}).get(n) or {}).get("bin_error_bound") or {} for n in metrics["ood"]}
    yield metrics.get("protocol", "segood"), metrics["ood"], bounds
    for name, block in (metrics.get("protocols") or {}).items():
        yield name, block["ood"], {n: {s: o.get("bin_error_bound") or {} for s, o in per.items()}
                                   for n, per in block["ood"].items()}


def ood_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table: every score x {fov, all} x protocol: AUROC, AUPR, FPR95 (%), counts, binning error bounds."""
    lines = ["| score | points | protocol | AUROC ↑ | AUPR ↑ | FPR95 ↓ | ID pts | OOD pts | bin err AUROC / FPR95 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = list(_protocol_rows(metrics))
    for name in metrics["ood"]:
        for pts in SUBSETS:
            for proto, ood, bounds in rows:
                o, b = ood[name][pts], bounds.get(name, {}).get(pts, {})
                err = f"{b['auroc']:.1e} / {b['fpr95']:.1e}" if b else "n/a"
                lines.append(f"| {name} | {pts} | {proto} | {_pct(o.get('auroc'))} | {_pct(o.get('aupr'))} | "
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
    from segood.atomic import write_text
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


def format_metrics(m: Mapping[str, Any]) -> str:
    """Console summary of one evaluation: segood's numbers, and each reference protocol's beside them
    (those in % with 4 decimals, i.e. 6 digits of the fraction, for comparison with the reference code)."""
    from segood.metrics.headline import headline

    lines = [f"ID mIoU (segood): FOV {100 * m['miou']['fov']['miou']:.1f}  all {100 * m['miou']['all']['miou']:.1f}"]
    for name, block in (m.get("protocols") or {}).items():
        if block.get("miou"):
            mi = block["miou"]
            lines.append(f"ID mIoU ({name}, as shipped / OOD class ignored): FOV {100 * mi['fov']['miou']:.4f} / "
                         f"{100 * mi['fov']['miou_id']:.4f}  all {100 * mi['all']['miou']:.4f} / "
                         f"{100 * mi['all']['miou_id']:.4f}")
    lines.append(f"{'score':16s} {'points':6s} {'protocol':16s} {'AUROC':>9s} {'AUPR':>9s} {'FPR95':>9s}"
                 "   (anomaly = positive, %)")
    for score in m["ood"]:
        for pts in SUBSETS:
            h = headline(m, score, pts)
            lines.append(f"{score:16s} {pts:6s} {'segood':16s} {h['auroc']:9.1f} {h['aupr']:9.1f} {h['fpr95']:9.1f}")
            for name, block in (m.get("protocols") or {}).items():
                o = block["ood"][score][pts]
                vals = [f"{100 * o[k]:9.4f}" if k in o else f"{'n/a':>9s}" for k in ("auroc", "aupr", "fpr95")]
                lines.append(f"{score:16s} {pts:6s} {name:16s} " + " ".join(vals))
    return "\n".join(lines)
