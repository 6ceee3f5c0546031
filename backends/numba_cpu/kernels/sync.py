"""Waiting in generated code: spin briefly, then give the CPU away.

Threads of one call wait for each other only at the end of a stage (for items
another thread claimed) and when a call closes. Spinning is the fastest way
to notice the other thread finishing when every thread has its own core;
when the machine is busy (more runnable threads than cores) the thread being
waited for may not be running at all, and spinning would burn the very time
slice it needs. So a waiter spins ``SPINS`` times, then calls the OS's yield
(``sched_yield``; its address, ``cg_thunks.yield_address``, is slot 0 of the thunk table) between checks.
"""

from __future__ import annotations

import logging

import numba

from keydnn.backends.numba_cpu.jit_options import JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import atomic_load, cpu_relax, fcall

__all__ = ["wait_at_least", "wait_at_most", "SPINS"]

logger = logging.getLogger(__name__)

#: pause instructions before a waiter starts yielding (roughly tens of microseconds).
SPINS = 200


@numba.njit(**JIT_OPTIONS)
def _pause_or_yield(spins, yield_addr):
    if spins < SPINS or yield_addr == 0:
        cpu_relax()
    else:
        fcall(yield_addr, 0)
    return spins + 1


@numba.njit(**JIT_OPTIONS)
def wait_at_least(S, slot, value, yield_addr):
    """Until S[slot] >= value."""
    spins = 0
    while atomic_load(S, slot) < value:
        spins = _pause_or_yield(spins, yield_addr)


@numba.njit(**JIT_OPTIONS)
def wait_at_most(S, slot, value, yield_addr):
    """Until S[slot] <= value."""
    spins = 0
    while atomic_load(S, slot) > value:
        spins = _pause_or_yield(spins, yield_addr)
