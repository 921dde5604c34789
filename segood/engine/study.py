"""Multi-seed studies: train every configuration for every seed, evaluate on val and test, resume.

``run_study`` is what ``segood study CONFIG... --seeds 0 1 2 3 4 --out DIR`` runs. Each
(configuration, seed) pair is one run folder ``DIR/runs/<arm>/seed<k>`` holding its checkpoint and
``eval_val/metrics.json`` + ``eval_test/metrics.json``; a run whose test metrics belong to its
final checkpoint is finished and skipped, an interrupted one resumes from its last checkpoint.
Runs are independent, so ``jobs`` of them train side by side (one torch thread each by default:
spconv's CPU path is single-threaded anyway, so two jobs nearly double throughput on 2 cores).
SIGINT / SIGTERM to the study reach every running training (through a shared flag each worker
watches, so a ``kill`` of the main process is enough): each finishes its step and writes a
checkpoint, no new run starts, and ``run_study`` raises
:class:`~segood.engine.interrupt.Interrupted`; the same command then resumes.

The summary (:mod:`segood.report.study`) chooses each configuration's headline score on
the val split and reports the test split only.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import yaml
from tqdm import tqdm

from segood.config import ConfigError
from segood.engine.families import load_config
from segood.engine.interrupt import Interrupted, StopRequest, request_stop, requested
from segood.engine.monitor import MONITOR_FILE, read_monitor

__all__ = ["Arm", "RunSpec", "plan_runs", "run_study", "load_results", "run_facts", "run_is_finished"]

SPLITS = ("val", "test")


@dataclass(frozen=True)
class Arm:
    """One configuration of a study: a name, an experiment config and its overrides."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One (arm, seed) training + evaluation."""

    arm: Arm
    seed: int
    out: Path
    overrides: tuple[str, ...] = field(default=())  # study-wide --set (data root, steps)

    @property
    def dir(self) -> Path:
        return self.out / "runs" / self.arm.name / f"seed{self.seed}"

    def config(self) -> dict:
        return load_config(self.arm.config, [*self.overrides, *self.arm.overrides, f"seed={self.seed}"])


def plan_runs(arms: Sequence[Arm], seeds: Sequence[int], out: Path, overrides: Sequence[str] = ()) -> list[RunSpec]:
    """Every (arm, seed) pair, seeds outermost (so an interrupted study has whole seeds done first)."""
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"study: configuration names must be unique, got {names}")
    return [RunSpec(a, int(s), Path(out), tuple(overrides)) for s in seeds for a in arms]


def check_configs(specs: Sequence[RunSpec]) -> None:
    """Load, and so check, every run's config before any work: a bad value stops the study at once,
    not after the runs before it have trained."""
    for spec in specs:
        spec.config()


def _metrics_path(run_dir: Path, split: str) -> Path:
    return run_dir / f"eval_{split}" / "metrics.json"


def trained_to(run_dir: Path, steps: int) -> bool:
    """True when the run's training finished at ``steps`` or more (its ``run_summary.json``)."""
    summary = run_dir / "run_summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("step", -1) >= steps


def run_is_finished(spec: RunSpec, steps: int) -> bool:
    """True when both splits' metrics exist and were computed from a checkpoint at ``steps``."""
    from segood.engine.artifacts import checkpoint_sha

    ckpt = spec.dir / "checkpoint.pt"
    if not (ckpt.is_file() and trained_to(spec.dir, steps)):
        return False
    sha = checkpoint_sha(ckpt)
    return all(_metrics_path(spec.dir, s).is_file()
               and json.loads(_metrics_path(spec.dir, s).read_text()).get("checkpoint_sha256") == sha
               for s in SPLITS)


def execute_run(spec: RunSpec, threads: int) -> dict:
    """Train (or resume) one run, then evaluate it on val and test. Returns a small status dict."""
    from segood.engine.evaluate import evaluate
    from segood.engine.train import train

    torch.set_num_threads(threads)
    cfg = spec.config()
    t0 = time.time()
    ckpt = spec.dir / "checkpoint.pt"
    if requested() is not None:
        raise Interrupted(requested(), f"{spec.dir}: not started (the study was stopped)")
    if not trained_to(spec.dir, int(cfg["train"]["steps"])):
        train(cfg, spec.dir, resume=ckpt.exists(), progress=False)
    for split in SPLITS:
        if requested() is not None:
            raise Interrupted(requested(), f"{spec.dir}: stopped before evaluating {split}")
        evaluate(cfg, ckpt, spec.dir / f"eval_{split}", progress=False, split=split)
    return {"arm": spec.arm.name, "seed": spec.seed, "seconds": round(time.time() - t0, 1)}


_STUDY_STOP = None  # in a worker: the study's shared stop flag (0, or the signal it received)


def _init_worker(flag) -> None:
    global _STUDY_STOP
    _STUDY_STOP = flag


def _watch(flag) -> None:
    """Worker thread: when the study was signalled, stop this run as if the signal came here."""
    while flag.value == 0:
        time.sleep(0.2)
    request_stop(flag.value)


def _worker(args: tuple[RunSpec, int]) -> dict:
    spec, threads = args
    if mp.current_process().name != "MainProcess":
        mp.set_start_method("fork", force=True)  # a spawned worker would spawn its DataLoader workers too
    try:
        with StopRequest():
            if _STUDY_STOP is not None:
                if _STUDY_STOP.value:
                    request_stop(_STUDY_STOP.value)
                threading.Thread(target=_watch, args=(_STUDY_STOP,), daemon=True).start()
            return {"ok": True, **execute_run(spec, threads)}
    except Interrupted as stop:
        return {"ok": False, "arm": spec.arm.name, "seed": spec.seed, "interrupted": stop.signum,
                "error": f"{stop.signal_name}: {stop}", "traceback": ""}
    except Exception as exc:  # reported in the summary; the other runs go on
        return {"ok": False, "arm": spec.arm.name, "seed": spec.seed, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}


def run_study(specs: Sequence[RunSpec], steps: int, jobs: int = 1, threads: int | None = None,
              progress: bool = True) -> list[dict]:
    """Run every unfinished spec, ``jobs`` at a time; returns one status dict per executed run.

    One progress bar counts the training steps of all runs together (read from each run's
    ``history.jsonl``), so two side-by-side trainings still show how far they are."""
    todo = [s for s in specs if not run_is_finished(s, steps)]
    print(f"[study] {len(specs)} runs planned, {len(specs) - len(todo)} already finished, {len(todo)} to run "
          f"({jobs} side by side)")
    threads = threads or (1 if jobs > 1 else torch.get_num_threads())
    bar = tqdm(total=len(todo) * steps, desc="study (training steps)", unit="step", disable=not progress,
               dynamic_ncols=True)
    statuses: list[dict] = []
    # worker processes must not be daemonic (each training starts DataLoader workers of its own)
    ctx = mp.get_context("spawn")
    flag = ctx.RawValue("i", 0)  # the signal the study received, read by every worker's watcher
    with ProcessPoolExecutor(max(1, jobs), mp_context=ctx, max_tasks_per_child=1, initializer=_init_worker,
                             initargs=(flag,)) as pool, \
            StopRequest("stopping every run after its current step (checkpoints are written)",
                        on_signal=lambda signum: setattr(flag, "value", flag.value or signum)) as stop:
        pending = {pool.submit(_worker, (s, threads)) for s in todo}
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            if stop.signum is not None:
                pending = {f for f in pending if not f.cancel()}  # runs not started yet stay unstarted
            for future in done:
                status = _result(future, stop.signum)
                statuses.append(status)
                outcome = ("done in %.0f s" % status["seconds"] if status["ok"] else
                           ("stopped: " if status.get("interrupted") else "FAILED: ") + status["error"])
                bar.write(f"[study] {status['arm']} seed {status['seed']}: {outcome}")
            bar.n = sum(min(steps, last_logged_step(s.dir)) for s in todo)
            bar.set_postfix_str(f"{len(statuses)}/{len(todo)} runs")
            bar.refresh()
    bar.close()
    if stop.signum is not None:
        finished = sum(s["ok"] for s in statuses)
        raise Interrupted(stop.signum, f"study stopped: {finished} of {len(todo)} runs finished in this call; "
                                       f"the interrupted ones wrote checkpoints")
    return statuses


def _result(future, signum: int | None) -> dict:
    """A worker's status; a worker killed by a signal before it could take it is reported too."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        if signum is None:
            raise
        return {"ok": False, "arm": "?", "seed": "?", "interrupted": signum, "error": f"worker stopped: {exc}",
                "traceback": ""}


def last_logged_step(run_dir: Path) -> int:
    """The last step in a run's ``history.jsonl`` (0 before the first log line)."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_bytes().rstrip().splitlines()
    try:
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (ValueError, KeyError):  # a line being written
        return int(json.loads(lines[-2])["step"]) if len(lines) > 1 else 0


def run_facts(run_dir: Path) -> dict:
    """What a run folder says besides its metrics, for the study's ablation and monitor tables: the
    training wall time and step (``run_summary.json``), the resolved training config (``config.yaml``)
    and the shortcut monitor's records (``monitor.jsonl``); None / [] where a file is missing."""
    summary = run_dir / "run_summary.json"
    done = json.loads(summary.read_text()) if summary.is_file() else {}
    config = run_dir / "config.yaml"
    return {"seconds": done.get("seconds"), "step": done.get("step"),
            "config": yaml.safe_load(config.read_text()) if config.is_file() else None,
            "monitor": read_monitor(run_dir / MONITOR_FILE)}


def load_results(specs: Sequence[RunSpec]) -> dict[str, dict[int, dict[str, dict]]]:
    """``results[arm][seed][split]`` = that run's metrics.json, and ``results[arm][seed]["run"]`` its
    :func:`run_facts` (runs without both splits' metrics are left out)."""
    out: dict[str, dict[int, dict[str, dict]]] = {}
    for spec in specs:
        paths = {s: _metrics_path(spec.dir, s) for s in SPLITS}
        if all(p.is_file() for p in paths.values()):
            out.setdefault(spec.arm.name, {})[spec.seed] = {**{s: json.loads(p.read_text()) for s, p in paths.items()},
                                                            "run": run_facts(spec.dir)}
    return out
