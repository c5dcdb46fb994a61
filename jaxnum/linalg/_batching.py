"""Batching helpers: loops that cost under `vmap` what their systems cost.

JAX batches a `while_loop` whose exit test differs between the systems by running it
while any system runs and selecting, after every step, between the new and the old
value of the *whole* carry. A Krylov loop whose carry holds a block of vectors (an
Arnoldi basis, an eigCG window) then copies that block at every step, although the
step writes one row of it. The helpers here give such loops a batching rule
(`jax.custom_batching.custom_vmap`) that leaves the block to the step's own masked
write.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import custom_batching, lax


def hoist(fn: Callable, *example_args):
    """`fn` as `(pure, consts)` with `pure(consts, *args) == fn(*args)`.

    Every array `fn` closes over becomes an explicit input: traced or not, of any
    dtype, including the constants of its own operations (the index array of
    `x.at[:n]`). A batching rule can only see explicit inputs: `custom_vmap` refuses
    a batched value in a closure, and inside a batched `lax.cond` every operand is
    batched. (`jax.closure_convert` hoists only the values that may carry a tangent.)
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree.structure(out_shape)

    def pure(consts, *args):
        flat = jax.tree.leaves(args)
        return jax.tree.unflatten(out_tree, jax.core.eval_jaxpr(closed.jaxpr, consts, *flat))

    return pure, list(closed.consts)


def batched_axes(in_batched):
    """`vmap` `in_axes` from a batching rule's `in_batched` flags."""
    return jax.tree.map(lambda batched: 0 if batched else None, in_batched)


def with_batching_rule(plain: Callable, rule: Callable, *args):
    """`plain(*args)`, but under `vmap` `rule(axis_size, in_batched, *args)` runs instead,
    and forward-mode derivatives differentiate `plain`.

    JAX's own JVP of a `custom_vmap` batches the tangents wrongly under
    `jax.vmap(jax.jvp(...))` (e.g. in `jax.jacfwd`: repeated rows), hence the
    `custom_jvp` around it. Every array `plain` and `rule` use must be in `args`
    (see `hoist`).
    """

    @custom_batching.custom_vmap
    def batched(*args):
        return plain(*args)

    batched.def_vmap(rule)

    @jax.custom_jvp
    def differentiable(*args):
        return batched(*args)

    @differentiable.defjvp
    def _(primals, tangents):
        return jax.jvp(plain, primals, tangents)

    return differentiable(*args)


def _broadcast(tree, batched, axis_size):
    return jax.tree.map(
        lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))),
        tree, batched,
    )


def lockstep_while(cond: Callable, body: Callable, init, masked):
    """`lax.while_loop(cond, lambda c: body(c, None), init)`, batched in lockstep.

    Alone (and under `jit`, `lax.scan`, `lax.map`) this is exactly the plain loop.
    Under `vmap` the loop runs while any system runs; `body(carry, run)` is called
    with `run` this system's exit test, and must leave the leaves that `masked` (a
    boolean prefix of the carry) marks unchanged where `run` is False: it masks its
    own writes to them (one row of a block, at the cost of the row). The other
    leaves are merged with `where(run, new, old)` as JAX's own rule would. Each
    system takes exactly the steps it takes alone.

    Forward-mode derivatives go through the plain loop (`with_batching_rule`),
    including the tangents of the arrays `cond` and `body` close over.
    """
    loop, loop_consts = hoist(lambda c: lax.while_loop(cond, lambda c: body(c, None), c), init)
    cond_pure, cond_consts = hoist(cond, init)
    body_pure, body_consts = hoist(body, init, jnp.array(True))

    def plain(loop_consts, cond_consts, body_consts, carry):
        return loop(loop_consts, carry)

    def rule(axis_size, in_batched, loop_consts, cond_consts, body_consts, carry):
        _, cond_b, body_b, carry_b = in_batched
        carry = _broadcast(carry, carry_b, axis_size)
        running = jax.vmap(cond_pure, in_axes=(batched_axes(cond_b), 0))
        step = jax.vmap(body_pure, in_axes=(batched_axes(body_b), 0, 0))

        def merge(run, is_masked, new, old):
            if is_masked:
                return new
            return jax.tree.map(
                lambda a, b: jnp.where(run.reshape(run.shape + (1,) * (a.ndim - 1)), a, b),
                new, old,
            )

        def advance(carry):
            run = running(cond_consts, carry)
            new = step(body_consts, carry, run)
            return jax.tree.map(lambda m, a, b: merge(run, m, a, b), masked, new, carry)

        out = lax.while_loop(lambda c: jnp.any(running(cond_consts, c)), advance, carry)
        return out, jax.tree.map(lambda _: True, out)

    return with_batching_rule(plain, rule, loop_consts, cond_consts, body_consts, init)
