"""The emulated CUDA tests catch every single-line kernel mutation in tests/emu_mutations.py (a dropped
barrier or cp.async wait, swapped fragment rows, an off-by-one tail, ...). Slow: it rebuilds
tforge._emu once per mutation (the first build compiles everything)."""
import pytest

import emu_mutations


@pytest.mark.slow
def test_every_mutation_is_caught():
    assert emu_mutations.main([]) == 0
