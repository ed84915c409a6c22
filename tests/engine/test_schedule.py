"""The reference learning-rate schedule, with values worked out by hand from the 49S YAML."""

import pytest

from spinenet.engine.schedule import CosineWithWarmup, StepWithWarmup, build_schedule
from spinenet.registry import get_config


@pytest.fixture
def sched():
    # 49S YAML: warm-up 0.0067 -> 0.28 over 2000 steps; 0.028 from 217610, 0.0028 from 226870.
    return build_schedule(get_config("retinanet_spinenet49s"))


def test_warmup_is_linear_from_the_warmup_rate(sched):
    assert sched(0) == pytest.approx(0.0067)
    # halfway: 0.0067 + 1000/2000 * (0.28 - 0.0067) = 0.14335
    assert sched(1000) == pytest.approx(0.14335)
    # last warm-up step: 0.0067 + 1999/2000 * 0.2733 = 0.27986335
    assert sched(1999) == pytest.approx(0.27986335)


def test_step_boundaries(sched):
    assert sched(2000) == pytest.approx(0.28)
    assert sched(217609) == pytest.approx(0.28)
    assert sched(217610) == pytest.approx(0.028)  # ">= start" switches on the boundary step itself
    assert sched(226869) == pytest.approx(0.028)
    assert sched(226870) == pytest.approx(0.0028)
    assert sched(231499) == pytest.approx(0.0028)


def test_190_recipe_values():
    s = build_schedule(get_config("retinanet_spinenet190"))
    assert s(2000) == pytest.approx(0.3) and s(171310) == pytest.approx(0.03) and s(180570) == pytest.approx(0.003)


def test_mismatched_levels_and_steps_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        StepWithWarmup(0.0, 10, 0.1, (0.01,), (5, 6))


def test_cosine():
    s = CosineWithWarmup(0.0, 10, 1.0, 110)
    assert s(5) == pytest.approx(0.5)
    assert s(60) == pytest.approx(0.5)  # halfway through the decay: 0.5 * (1 + cos(pi/2))
    assert s(110) == pytest.approx(0.0, abs=1e-12)
