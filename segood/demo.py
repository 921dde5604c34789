"""The main job on the embedded default: synthetic scenes -> late fusion and Feature Mixing trained
with the same budget, side by side -> evaluation on val and test -> each model's score chosen on
val, the test split reported -> a report folder with one picture.

It is a one-seed :mod:`segood.engine.study`: the multi-seed claim is ``segood study`` (README).
"""
from __future__ import annotations

import time
from pathlib import Path

from segood.config import CONFIG_DIR
from segood.engine.builders import build_label_map, build_reader
from segood.engine.inference import Predictor
from segood.engine.study import Arm, check_configs, load_results, plan_runs, run_study
from segood.report.study import summarize_study, write_study_report
from segood.synthetic import SyntheticConfig, ensure_dataset
from segood.viz.anomaly_png import render_anomaly_png

ARMS = (Arm("late_fusion", str(CONFIG_DIR / "synthetic_baseline.yaml")),
        Arm("feature_mixing", str(CONFIG_DIR / "synthetic_feature_mixing.yaml")))


def demo_data_config(args) -> SyntheticConfig:
    return SyntheticConfig(num_train=args.train_scans, num_val=args.val_scans, num_test=args.test_scans,
                           azimuth_columns=args.azimuth_columns, seed=args.seed)


def run_demo(args) -> dict:
    out = Path(args.out)
    t0 = time.time()
    data_dir = Path(args.data) if args.data else out / "data"
    syn = demo_data_config(args)
    overrides = [f"data.root={data_dir.resolve()}", f"train.steps={args.steps}", *(args.set or [])]
    specs = plan_runs(ARMS, [args.seed], out, overrides)
    check_configs(specs)  # before any data is made
    t = time.time()
    made = ensure_dataset(data_dir, syn)
    print(f"[demo] {'generated' if made else 'reusing'} {syn.num_train}+{syn.num_val}+{syn.num_test} synthetic scans "
          f"({time.time() - t:.0f} s) in {data_dir}")
    print(f"[demo] training {len(ARMS)} models ({args.steps} steps each, {args.jobs} side by side) -> {out / 'runs'}")
    statuses = run_study(specs, args.steps, jobs=args.jobs)
    failed = [s for s in statuses if not s["ok"]]
    if failed:
        raise RuntimeError("demo: " + "; ".join(f"{s['arm']}: {s['error']}" for s in failed))
    results = load_results(specs)
    summary = summarize_study(results, "late_fusion")
    picture = render_heldout(specs[1].config(), results, out / "report" / "heldout_anomaly.png")
    context = {"command": "segood demo " + f"--out {args.out} --steps {args.steps} --seed {args.seed}",
               "data": f"{data_dir} (synthetic, train/val/test = {args.train_scans}/{args.val_scans}/{args.test_scans})",
               "seeds": f"one ({args.seed}): this shows the pipeline runs; the claim is `segood study` (README)",
               "wall time (s)": round(time.time() - t0), "held-out picture": picture.name}
    table = write_study_report(out / "report", summary, context)
    print(table)
    print(f"[demo] report: {out / 'report' / 'summary.md'}")
    return {"table": table, "summary": summary, "report": str(out / "report")}


def render_heldout(cfg: dict, results: dict, png: Path) -> Path:
    """Colour the first test scan by the Feature Mixing model's operating point (score and
    threshold chosen on val, all points: what `segood viz` shows for this checkpoint)."""
    label_map = build_label_map(cfg)
    scan = build_reader(cfg, "test", label_map)[0]
    ckpt = next(iter(results["feature_mixing"].values()))["test"]["checkpoint"]
    predictor = Predictor(ckpt)
    values = predictor(scan).scores[predictor.op.score]
    ood_target = label_map.to_ood_target(scan.learning_labels)
    png.parent.mkdir(parents=True, exist_ok=True)
    render_anomaly_png(png, scan.points, values, ood_target, scan.images[0], scan.pixel_uv, scan.visible,
                       f"test scan {Path(scan.source).name}: Feature Mixing, {predictor.op.score} "
                       f"(operating point chosen on val, all points)",
                       threshold=predictor.op.threshold_for(values))
    return png


__all__ = ["run_demo"]
