"""The recycle space carried from one solve to the next."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._misc import batched_rows, tall_qr, upper_inverse


class RecycleSpace(eqx.Module):
    """A Krylov recycle (deflation) space: the state one solve hands the next.

    It has a fixed shape, so a sequence of solves can run inside `lax.scan`. Pass it
    as `options={"recycle": space}` to `lineax.linear_solve`; the solve returns the
    updated space as `solution.stats["recycle"]`.

    **Fields:**

    - `basis`: `U`, shape `(n, k)`: the recycled subspace (in the preconditioned
        variable for right-preconditioned GCRO-DR).
    - `image`: `C = A U` (GCRO-DR: orthonormal) for the operator of the solve that
        produced it. Every solve recomputes it for its own operator (`k` matrix-vector
        products as one batched product), so the space stays correct when the
        operator changes. `DeflatedCG` stores `A W` only when it is known without
        extra products (after a solve that carried a space); after a solve that
        started fresh the image is zero, and the next solve computes it anyway.
    - `active`: whether `basis` holds a space at all (`False` for an empty space).
    - `skip`, `backoff`, `reference`: the bookkeeping of the adaptive policy that
        detects a useless space (see `GCRODR(adaptive=...)`): `skip` solves to run
        without carrying it, the next back-off length, and the running number of
        matrix-vector products of solves that started without a carried space.
    - `solves`: how many solves have used this space's lineage (counts every solve;
        `DeflatedCG(harvest_every=h)` harvests on every `h`-th).
    """

    basis: Float[Array, "n k"]
    image: Float[Array, "n k"]
    active: Bool[Array, ""]
    skip: Int[Array, ""]
    backoff: Int[Array, ""]
    reference: Float[Array, ""]
    solves: Int[Array, ""]

    @property
    def size(self) -> int:
        return self.basis.shape[1]


def empty_space(n: int, k: int, dtype) -> RecycleSpace:
    """An empty recycle space of the right shape (the state before the first solve)."""
    zeros = jnp.zeros((n, k), dtype)
    return RecycleSpace(
        basis=zeros,
        image=zeros,
        active=jnp.array(False),
        skip=jnp.array(0, jnp.int32),
        backoff=jnp.array(1, jnp.int32),
        reference=jnp.array(0.0, dtype),
        solves=jnp.array(0, jnp.int32),
    )


def check_space(space, n: int, k: int, dtype, name: str) -> RecycleSpace:
    if not isinstance(space, RecycleSpace):
        raise TypeError(
            f"{name}: `options['recycle']` must be a `jaxnum.linalg.RecycleSpace` "
            "(from a previous solve's `stats['recycle']`, or "
            f"`solver.empty_recycle(operator)`); got {type(space)}."
        )
    if space.basis.shape != (n, k) or space.image.shape != (n, k):
        raise ValueError(
            f"{name}: the recycle space has shape {space.basis.shape}, but this "
            f"solver needs ({n}, {k}) (system size, `recycle`). Build it with "
            "`solver.empty_recycle(operator)` or reuse one from the same solver."
        )
    return RecycleSpace(
        basis=space.basis.astype(dtype),
        image=space.image.astype(dtype),
        active=space.active,
        skip=space.skip,
        backoff=space.backoff,
        reference=space.reference.astype(dtype),
        solves=space.solves,
    )


def load_space(options, n: int, k: int, dtype, name: str, adaptive: bool):
    """The `recycle` option (or an empty space), checked, as a constant; and whether
    this solve carries it (an active space, not in an adaptive back-off)."""
    space = options.get("recycle", None)
    space = empty_space(n, k, dtype) if space is None else check_space(space, n, k, dtype, name)
    space = jax.lax.stop_gradient(space)
    carried = space.active
    if adaptive:
        carried = carried & (space.skip == 0)
    return space, carried


def reproject(matvec, rows: Array, tol: float | None = None) -> tuple[Array, Array, Array]:
    """For a new operator: `C = A U`, `C = QR`, returns `(U R^{-1}, Q, ok)` as rows.

    `rows` is `U^T`, `(k, *shape)`, and `matvec` acts on vectors of `shape` (e.g. the
    operator's grid); the results have the same layout. `ok` is False when `U` has
    lost rank (it is then dropped by the caller). `tol`: how orthonormal `Q` must be,
    when less than to rounding (the caller stores it in a lower precision; see
    `tall_qr`).
    """
    k = rows.shape[0]
    image = batched_rows(matvec, rows)
    qt, r, ok = tall_qr(image.reshape(k, -1), tol)
    r_safe = jnp.where(ok, r, jnp.eye(k, dtype=r.dtype))
    new_rows = upper_inverse(r_safe).T @ rows.reshape(k, -1)
    return new_rows.reshape(rows.shape), jnp.where(ok, qt, 0.0).reshape(rows.shape), ok


def adaptive_update(
    space: RecycleSpace,
    carried: Array,
    num_matvecs: Array,
    ratio: float,
    max_backoff: int,
) -> RecycleSpace:
    """Detects a useless carried space from the cost of the solve that used it.

    A solve that carried the space and still needed more than `ratio` times the
    matrix-vector products of recent solves that started fresh marks the space as
    useless: the next `backoff` solves start fresh (harvesting a new space), and the
    back-off doubles each time carrying fails again (up to `max_backoff`). A solve
    where carrying paid resets the back-off. On related sequences carrying pays
    and nothing changes; on unrelated ones at most a fraction of the solves pay the
    re-projection, which bounds the loss.
    """
    work = num_matvecs.astype(space.reference.dtype)
    useless = carried & (space.reference > 0) & (work > ratio * space.reference)
    fresh = ~carried
    reference = jnp.where(
        fresh,
        jnp.where(space.reference > 0, 0.5 * (space.reference + work), work),
        space.reference,
    )
    skip = jnp.where(
        useless, space.backoff, jnp.where(fresh, jnp.maximum(space.skip - 1, 0), 0)
    )
    backoff = jnp.where(
        useless,
        jnp.minimum(2 * space.backoff, max_backoff),
        jnp.where(carried, 1, space.backoff),
    )
    return RecycleSpace(
        basis=space.basis,
        image=space.image,
        active=space.active,
        skip=skip.astype(jnp.int32),
        backoff=backoff.astype(jnp.int32),
        reference=reference,
        solves=space.solves,
    )
