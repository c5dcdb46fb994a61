"""Solvers iterate on one flat vector; the user's function sees its PyTree."""

import jax
from jax.flatten_util import ravel_pytree


class Flat:
    """`ravel_pytree` wrappers around a problem, for a given `args`."""

    def __init__(self, problem, y_example, args):
        flat, self.unravel = ravel_pytree(y_example)
        self.size = flat.size
        self.dtype = flat.dtype
        self.problem = problem
        self.args = args

    def ravel(self, tree):
        return ravel_pytree(tree)[0]

    def fn(self, x):
        return self.problem.fn(self.unravel(x), self.args)

    def fn_flat(self, x):
        return ravel_pytree(self.fn(x))[0]

    def objective(self, x):
        return self.problem.objective(self.unravel(x), self.args)

    def value_and_grad(self, x):
        return jax.value_and_grad(self.objective)(x)

    def residual(self, x):
        return ravel_pytree(self.problem.residual(self.unravel(x), self.args))[0]
