"""Test hook, active only when ``SEGOOD_TEST_SIGNAL=NAME:STEP:WHO`` is set (put this folder on
PYTHONPATH): the trainer sends signal NAME (SIGINT, SIGTERM, SIGKILL) at the start of training step
STEP (1-based), to itself (WHO=self) or to its parent (WHO=parent: a study's main process), and for
a parent waits until the stop has reached this trainer. So the signal lands inside step STEP on any
machine, however slow: tests of interrupts need no clock."""
import os

if os.environ.get("SEGOOD_TEST_SIGNAL"):
    import signal
    import time

    import segood.engine.train as _train

    _name, _step, _who = os.environ["SEGOOD_TEST_SIGNAL"].split(":")
    _original = _train.Trainer._optimizer_step

    def _optimizer_step(self, batches):
        if self.step + 1 == int(_step):
            os.kill(os.getpid() if _who == "self" else os.getppid(), getattr(signal, _name))
            if _who == "parent":  # the parent's stop arrives through the study's shared flag
                from segood.engine.interrupt import requested

                for _ in range(6000):
                    if requested() is not None:
                        break
                    time.sleep(0.05)
        return _original(self, batches)

    _train.Trainer._optimizer_step = _optimizer_step
