import os

import jax
import jax.random as jr
import pytest

jax.config.update("jax_enable_x64", True)

# The suite is bound by XLA compilation, not by running the (small) programs it
# compiles: compiling with XLA's optimisation passes off cuts the default suite's
# time by about a third (session 12: 9 min 8 s -> 6 min 19 s on 2 cores). The
# programs compute the same values up to rounding order. Set
# JAXNUM_TEST_OPTIMIZED=1 to test the optimised programs users run.
# The environment variable carries the setting to the subprocesses some tests start
# (the command line, the notebooks).
if not os.environ.get("JAXNUM_TEST_OPTIMIZED"):
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def getkey():
    """Returns a function that hands out a fresh PRNG key on every call."""
    key = [jr.PRNGKey(5678)]

    def _getkey():
        key[0], sub = jr.split(key[0])
        return sub

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after every test module.

    The whole suite runs in one process and compiles thousands of XLA programs; each
    keeps memory mappings alive, and the process once crashed inside XLA's compiler
    (SIGSEGV) near the end of the suite while no test failed on its own, with the
    mapping count close to the kernel's `vm.max_map_count` (65530). Clearing the
    caches between modules keeps the process small; tests never rely on a warm
    cache across modules.
    """
    yield
    jax.clear_caches()
