"""robustprior.training.interrupt: SIGINT / SIGTERM as one exception with the shell's exit status, deferred
inside a training loop until it has written a checkpoint."""
from __future__ import annotations

import os
import signal

import pytest

from robustprior.training.interrupt import Interrupted, deferred_stop, stop_on_signals, stop_requested


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_raises_interrupted_with_the_shell_status(signum: int, status: int) -> None:
    previous = signal.getsignal(signum)
    with pytest.raises(Interrupted) as stop:
        with stop_on_signals():
            os.kill(os.getpid(), signum)
            pytest.fail("the signal did not interrupt")
    assert stop.value.exit_status == status and stop.value.name == signal.Signals(signum).name
    assert signal.getsignal(signum) is previous  # the handlers are given back


def test_a_deferred_signal_waits_for_the_loop_and_a_second_one_does_not() -> None:
    steps = []
    with pytest.raises(Interrupted) as stop:
        with stop_on_signals(), deferred_stop():
            for step in range(5):
                if step == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                steps.append(step)
                if stop_requested() is not None:
                    break  # a training loop writes its checkpoint here
    assert steps == [0, 1] and stop.value.exit_status == 143  # raised when the block ended
    with pytest.raises(Interrupted):
        with stop_on_signals(), deferred_stop():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop_requested() == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)  # insists: raised at once
            pytest.fail("the second signal did not interrupt")
    assert stop_requested() is None
