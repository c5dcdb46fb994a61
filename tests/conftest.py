import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)


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
