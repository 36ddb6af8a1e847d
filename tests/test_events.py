"""Events, the generator driver, the stop flag and the ETA clock."""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field

import pytest

from napari_unetpp.events import EtaClock, Event, Stopper, drive


def _job(
    n: int, stopper: Stopper | None = None, log: list[str] | None = None
) -> Generator[Event, None, str]:
    try:
        for i in range(n):
            if stopper is not None and stopper.stopped:
                return f"stopped at {i}"
            yield Event("step", i + 1, n, f"step {i + 1}")
        return "done"
    finally:
        if log is not None:
            log.append("closed")


def test_event_fields_defaults_and_fraction():
    event = Event("step", 3, 4)
    assert (event.message, event.eta_s) == ("", None)
    assert event.fraction == 0.75
    assert Event("step", 5, 0).fraction == 0.0  # unknown total
    assert Event("step", 9, 4).fraction == 1.0


def test_event_subclasses_add_fields():
    @dataclass
    class TrainLike(Event):
        loss: float | None = None
        head_losses: dict[int, float] = field(default_factory=dict)

    event = TrainLike("step", 1, 10, eta_s=2.5, loss=0.3)
    assert isinstance(event, Event) and event.loss == 0.3 and event.head_losses == {}


def test_drive_returns_the_generator_value_and_passes_every_event():
    seen: list[Event] = []
    assert drive(_job(4), seen.append) == "done"
    assert [e.step for e in seen] == [1, 2, 3, 4]
    assert drive(_job(2)) == "done"  # no callback
    assert drive(_job(0)) == "done"  # nothing yielded


def test_drive_closes_the_generator_when_the_callback_raises():
    log: list[str] = []

    def callback(event: Event) -> None:
        if event.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(_job(5, log=log), callback)
    assert log == ["closed"]  # the job's finally ran before the error left drive


def test_stopper_flag_stop_reset_and_engine_loop():
    stopper = Stopper()
    assert not stopper.stopped
    seen: list[int] = []

    def stop_after_two(event: Event) -> None:
        seen.append(event.step)
        if event.step == 2:
            stopper.stop()

    assert drive(_job(10, stopper), stop_after_two) == "stopped at 2"
    assert seen == [1, 2] and stopper.stopped
    stopper.stop()  # idempotent
    stopper.reset()
    assert not stopper.stopped
    assert drive(_job(3, stopper)) == "done"


def test_stopper_is_set_from_another_thread():
    stopper = Stopper()
    thread = threading.Timer(0.01, stopper.stop)
    thread.start()
    assert stopper.wait(timeout=5.0)
    thread.join()
    assert stopper.stopped
    assert not Stopper().wait(timeout=0.0)


def test_eta_clock_measures_from_the_first_update():
    now = [100.0]
    clock = EtaClock(clock=lambda: now[0])
    assert clock.update(1, 11) is None  # no rate yet (first step may include warm-up)
    now[0] += 2.0
    assert clock.update(3, 11) == pytest.approx(8.0)  # 1 s/step, 8 steps left
    now[0] += 1.0
    assert clock.update(3, 11) == pytest.approx(12.0)  # slower now: 1.5 s/step
    now[0] += 9.0
    assert clock.update(11, 11) == 0.0
    clock.reset()
    assert clock.update(12, 20) is None
