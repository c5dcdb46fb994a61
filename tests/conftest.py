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
