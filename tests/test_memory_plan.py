"""The memory planner both step executors share (backends/memory_plan.py): views, in place, reuse, outputs."""

from __future__ import annotations

import numpy as np

from keydnn.backends.memory_plan import StepNeeds, plan_storage

F4 = np.dtype("float32")


def _step(operands, output, allocates=True, inplace=False, size=8, dtype=F4):
    return StepNeeds(tuple(operands), output, allocates, inplace, size, dtype)


def test_in_place_over_a_dying_operand_and_reuse_after_release():
    # slot 0 input; 1 = relu(0) (fresh), 2 = neg(1) in place, 3 = exp(2) in place, 4 = add(3, 0): graph output
    steps = [_step([0], 1), _step([1], 2, inplace=True), _step([2], 3, inplace=True), _step([3, 0], 4, inplace=True)]
    plan = plan_storage(steps, external={0}, output_slots=[4])
    assert plan.storage == (0, 0, 0, 0)  # every step writes over step 0's storage
    assert plan.outputs == (0,) and plan.output_of == (0,) and plan.arena == ()


def test_no_in_place_while_the_operand_is_read_later_or_differs():
    steps = [_step([0], 1), _step([1], 2, inplace=True), _step([1, 2], 3, inplace=True),
             _step([3], 4, inplace=True, size=4), _step([4], 5, inplace=True, dtype=np.dtype("float64"), size=4)]
    plan = plan_storage(steps, external={0}, output_slots=[5])
    assert plan.storage[1] == 1  # slot 1 (step 0's storage) is still read by step 2
    assert plan.storage[2] == 0  # step 2 may write over slot 1, which dies there ...
    assert plan.storage[3] == 3 and plan.storage[4] == 4  # ... but not across a size or dtype change


def test_no_in_place_over_storage_another_operand_lives_in():
    # 2 = reshape(1) is a view of 1; mul(1, 2) must not write over 1 while it reads 2 at other indices
    steps = [_step([0], 1), _step([1], 2, allocates=False), _step([1, 2], 3, inplace=True)]
    plan = plan_storage(steps, external={0}, output_slots=[3])
    assert plan.storage == (0, 0, 2)
    assert plan.place(1, allocates=False) == ("none", -1) and plan.place(2, True) == ("output", 0)


def test_released_buffers_are_reused_best_fit_and_grown():
    steps = [_step([0], 1, size=100), _step([1], 2, size=10), _step([2], 3, size=50), _step([3], 4, size=200),
             _step([4], 5, size=5)]
    plan = plan_storage(steps, external={0}, output_slots=[5])
    assert plan.outputs == (4,)
    # 1 (100) -> buffer 0; 2 (10) -> buffer 1 while 1 lives; 3 (50) reuses buffer 0 (1 released after step 1);
    # 4 (200) grows buffer 1 (2 released after step 2)
    assert [plan.arena_of[s] for s in (0, 1, 2, 3)] == [0, 1, 0, 1]
    assert plan.arena == ((100, F4), (200, F4))
