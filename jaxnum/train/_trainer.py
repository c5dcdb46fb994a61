"""The trainer: jitted optax steps over seeded shuffled batches, evaluation at several
resolutions, progress, metrics history, checkpoint/resume and data parallelism."""

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from ._checkpoint import atomic_write_json, load_checkpoint, read_meta, save_checkpoint
from ._data import as_dataset, num_batches, prefetch, read_batch, shuffled_batches
from ._ema import _check_decay, ema_parameters, parameter_ema
from ._losses import AbstractLoss, RelativeLp
from ._normalise import ChannelNormaliser, NormalisedModel
from ._objectives import AbstractObjective, Supervised, example_batch
from ._parallel import DataParallel


class TrainState(eqx.Module):
    """What changes during training.

    **Fields:**

    - `params`: the trainable arrays of the model (`eqx.partition(model,
        eqx.is_inexact_array)`), the rest of the model being static.
    - `opt_state`: the optax state.
    - `step`: optimiser steps taken.
    """

    params: PyTree[Array]
    opt_state: PyTree
    step: Int[Array, ""]


def _raw_key(key) -> np.ndarray:
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jr.key_data(key)
    key = np.asarray(key)
    if key.dtype != np.uint32 or key.ndim != 1:
        raise TypeError("`key` must be a PRNG key (`jax.random.key(seed)` or `jax.random.PRNGKey(seed)`).")
    return key


@jax.jit
def _step_keys(key, steps):
    """The key of every step: `fold_in(key, global step)` (one dispatch per epoch)."""
    return jax.vmap(lambda i: jr.fold_in(key, i))(steps)


def _progress(epoch: int, epochs: int) -> float:
    return epoch / (epochs - 1) if epochs > 1 else 1.0


class Trainer(eqx.Module):
    """Trains an Equinox model with optax. Holds only hyper-parameters; `fit` runs the
    loop, `step` is one jitted optimiser step on explicit state.

    The model is called on ONE unbatched sample `(channels, *grid)` (parameter-
    conditioned models as `model(x, params)`); the step `vmap`s it over the batch.
    Gradients are reverse-mode autodiff of the objective's loss.

    **Arguments:**

    - `optimiser`: any `optax.GradientTransformation` (schedules included; its step
        count lives in the optimiser state, so resuming continues the schedule).
    - `loss`: an `AbstractLoss` (default `RelativeLp(2)`, mean over the batch).
    - `objective`: `Supervised()` (default) or `Autoregressive(...)` for one-step
        models rolled out in time (CAPE curriculum, pushforward trick).
    - `epochs`, `batch_size`: passes over the training set; samples per step.
    - `normalise`: fit channel-wise normalisers on the training data and train the
        model in normalised units (the returned model is a `NormalisedModel` that
        takes and returns physical units at any resolution).
    - `use_params`: call the model as `model(x, params)` with the dataset's `params`
        (scalar PDE parameters, for CAPE models).
    - `parallel`: a `DataParallel` to split batches across devices, or `None`.
    - `drop_last`: drop the last incomplete batch of an epoch (keeps one compiled
        step; default).
    - `eval_batch_size`: batch size for evaluation (default: `batch_size`).
    - `ema`: if a decay `d` in [0, 1) is given, keep an exponential moving average
        of the parameters (`parameter_ema(optimiser, d)`, in the optimiser state, so
        checkpointed and resumed with it) and evaluate and return the *averaged*
        model; training itself is unchanged. `None` (default): no average.
    """

    optimiser: optax.GradientTransformation
    loss: AbstractLoss = RelativeLp()
    objective: AbstractObjective = Supervised()
    epochs: int = eqx.field(static=True, default=10)
    batch_size: int = eqx.field(static=True, default=32)
    normalise: bool = eqx.field(static=True, default=True)
    use_params: bool = eqx.field(static=True, default=False)
    parallel: DataParallel | None = None
    drop_last: bool = eqx.field(static=True, default=True)
    eval_batch_size: int | None = eqx.field(static=True, default=None)
    ema: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.ema is not None:
            _check_decay(self.ema)
        if not isinstance(self.optimiser, optax.GradientTransformation):
            raise TypeError("`optimiser` must be an optax.GradientTransformation, e.g. optax.adam(1e-3).")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"`epochs` and `batch_size` must be >= 1; got {self.epochs} and {self.batch_size}.")
        if self.parallel is not None:
            self.parallel.check_batch_size(self.batch_size)
            if self.eval_batch_size is not None:
                self.parallel.check_batch_size(self.eval_batch_size, "eval_batch_size")

    # --- pieces ---------------------------------------------------------------

    def init(self, model: eqx.Module) -> tuple[TrainState, Any]:
        """Splits `model` into trainable arrays and the rest.

        **Returns:** `(state, static)`: the initial `TrainState` and the static part
        (`eqx.combine(state.params, static)` rebuilds the model).
        """
        params, static = eqx.partition(model, eqx.is_inexact_array)
        opt_state = self._optimiser().init(params)
        return TrainState(params, opt_state, jnp.zeros((), jnp.int32)), static

    def _optimiser(self):
        return self.optimiser if self.ema is None else parameter_ema(self.optimiser, self.ema)

    def eval_params(self, state: TrainState) -> PyTree[Array]:
        """The parameters to evaluate and return: the moving average with `ema`,
        else `state.params`."""
        return state.params if self.ema is None else ema_parameters(state.opt_state)

    def wrap(self, inner, normalisers):
        """The model in physical units: `inner` behind its normalisers (if any)."""
        if normalisers is None:
            return inner
        return NormalisedModel(inner, *normalisers)

    def step(self, state: TrainState, static, normalisers, batch: dict, key, progress) -> tuple[TrainState, Array]:
        """One optimiser step on one batch (call it under `jax.jit`; `fit` does).

        **Returns:** `(state, loss)`.
        """

        def loss_fn(params):
            model = self.wrap(eqx.combine(params, static), normalisers)
            return self.objective.loss(model, batch, self.loss, key, progress)

        value, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self._optimiser().update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), value

    def _metrics_fn(self):
        def metrics(model, batch):
            return self.objective.metrics(model, batch, self.loss)

        return eqx.filter_jit(metrics)

    def evaluate(self, model, data, *, batch_size: int | None = None, _jitted=None) -> dict[str, float]:
        """Mean metrics of `model` (physical units, e.g. what `fit` returns) over
        every sample of `data` (any resolution; one compilation per resolution).

        **Returns:** `{metric: mean over samples}`, from the objective's `metrics`
        (`loss`, `rel_l2` for `Supervised`; `nrmse`, `nrmse_final` for
        `Autoregressive`).
        """
        data = as_dataset(data, "eval data")
        bs = batch_size or self.eval_batch_size or self.batch_size
        fn = self._metrics_fn() if _jitted is None else _jitted
        n = len(data)
        totals: dict[str, float] = {}
        for start in range(0, n, bs):
            idx = np.arange(start, min(start + bs, n))
            count = len(idx)
            # Pad the last batch to a full one (one compilation), weight pads 0.
            idx = np.concatenate([idx, np.full(bs - count, idx[-1])])  # stays sorted
            batch = self._prepare(read_batch(data, idx))
            values = jax.device_get(fn(model, batch))
            for name, v in values.items():
                totals[name] = totals.get(name, 0.0) + float(np.sum(np.asarray(v)[:count], dtype=np.float64))
        return {name: total / n for name, total in totals.items()}

    def _prepare(self, batch):
        if not self.use_params:
            batch.pop("params", None)
        if self.parallel is not None:
            batch = self.parallel.shard_batch(batch)
        return batch

    # --- checks before training ----------------------------------------------

    def _check(self, model, data, name):
        if self.use_params and getattr(data, "params", None) is None:
            raise ValueError(
                f"`use_params=True` but {name} has no `params`; pass a dataset with scalar "
                "parameters (N, p) or use_params=False."
            )
        in_shape, out_shape = self.objective.expected_output(data)
        sample = example_batch(data)
        x = jnp.asarray(sample["inputs"][0]) if in_shape == tuple(data.inputs.shape[1:]) else jnp.zeros(in_shape, data.outputs.dtype)
        args = (jnp.asarray(sample["params"][0]),) if self.use_params else ()
        try:
            out = eqx.filter_eval_shape(lambda m: m(x, *args), model)
        except Exception as e:  # noqa: BLE001  (its message is put in ours)
            raise ValueError(
                f"The model cannot be applied to one sample of {name} with shape {in_shape}"
                f"{' and params ' + str(args[0].shape) if args else ''}: {type(e).__name__}: {e}. "
                "Check the model's in_channels / number of spatial dimensions against the data "
                "(samples are unbatched, channels first)."
            ) from None
        if tuple(out.shape) != out_shape:
            raise ValueError(
                f"The model maps a sample {in_shape} of {name} to shape {tuple(out.shape)}, but the "
                f"target has shape {out_shape}: set the model's out_channels to {out_shape[0]}"
                " and make it keep the grid."
            )

    # --- the loop ---------------------------------------------------------------

    def fit(
        self,
        model: eqx.Module,
        train_data,
        *,
        key: PRNGKeyArray,
        eval_data: Mapping[Any, Any] | None = None,
        eval_every: int = 1,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        checkpoint_every_steps: int | None = None,
        resume: bool = True,
        metrics_path: str | os.PathLike | None = None,
        progress: bool = True,
        callbacks: Sequence[Callable[[dict, Any], None]] = (),
    ) -> tuple[Any, list[dict]]:
        """Trains `model` on `train_data`.

        **Arguments:**

        - `model`: an Equinox model called on one unbatched sample.
        - `train_data`: a dataset (`ArrayDataset`, `HDF5Dataset`, anything with
            `inputs`/`outputs` arrays), a path to a `jaxnum.data` HDF5 file, or a
            tuple `(inputs, outputs[, params])`.
        - `key`: seeds the shuffling (epoch `e` visits samples in an order that
            depends only on `(key, e)`) and the per-step randomness.
        - `eval_data`: `{name: dataset}` evaluated every `eval_every` epochs, e.g.
            `{64: test_64, 128: test_128}` for several resolutions.
        - `checkpoint_dir`: where checkpoints go (none if `None`). With
            `resume=True` (default) a run finds the newest checkpoint there and
            continues from it to the same result as an uninterrupted run.
        - `checkpoint_every`: epochs between checkpoints (the last epoch always
            writes one); `checkpoint_every_steps`: also every that many steps.
        - `metrics_path`: JSON file for the history, rewritten (atomically) every
            epoch (default: `checkpoint_dir/history.json` when checkpointing).
        - `progress`: show a tqdm bar with the loss and samples per second.
        - `callbacks`: `cb(record, model)` after every epoch.

        **Returns:** `(model, history)`: the trained model (a `NormalisedModel`
        when normalising) and one record per epoch (`epoch`, `step`, `train_loss`,
        `time_s`, `samples_per_s`, schedule values, `eval: {name: metrics}`).
        """
        for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every),
                            ("checkpoint_every_steps", checkpoint_every_steps or 1)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        opened = []  # datasets this call opens from paths, closed at the end

        def dataset(obj, name):
            ds = as_dataset(obj, name)
            if ds is not obj:
                opened.append(ds)
            return ds

        try:
            data = dataset(train_data, "train_data")
            evals = {str(k): dataset(v, f"eval_data[{k!r}]") for k, v in (eval_data or {}).items()}
            return self._fit(
                model, data, evals, key, eval_every, checkpoint_dir, checkpoint_every,
                checkpoint_every_steps, resume, metrics_path, progress, callbacks,
            )
        finally:
            for ds in opened:
                if hasattr(ds, "close"):
                    ds.close()

    def _fit(
        self, model, data, evals, key, eval_every, checkpoint_dir, checkpoint_every,
        checkpoint_every_steps, resume, metrics_path, progress, callbacks,
    ):
        n = len(data)
        nb = num_batches(n, self.batch_size, self.drop_last)
        if nb == 0:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set ({n} samples) "
                "with drop_last=True: lower batch_size."
            )
        if not self.drop_last and self.parallel is not None and n % self.batch_size % self.parallel.num_devices:
            raise ValueError("With `parallel`, use drop_last=True (the last batch would not split across devices).")
        self._check(model, data, "train_data")
        for name, ev in evals.items():
            self._check(model, ev, f"eval_data[{name!r}]")
        raw_key = _raw_key(key)
        data_key, step_key = jr.split(raw_key)

        state, static = self.init(model)
        channels = self.objective.expected_output(data)
        normalisers = None
        if self.normalise:
            dtype = jnp.result_type(float)
            normalisers = (ChannelNormaliser.empty(channels[0][0], dtype=dtype), ChannelNormaliser.empty(channels[1][0], dtype=dtype))

        history: list[dict] = []
        start_epoch, start_batch, loss_sum, loss_count = 0, 0, 0.0, 0
        ckpt_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        meta = read_meta(ckpt_dir) if (ckpt_dir and resume) else None
        if meta is not None:
            if meta.get("key") != raw_key.tolist():
                raise ValueError(
                    f"The checkpoint in {ckpt_dir!r} was written by a run with another key; pass the "
                    "same key to resume it, or another `checkpoint_dir` (or resume=False)."
                )
            if meta.get("batch_size") != self.batch_size or meta.get("num_samples") != n:
                raise ValueError(
                    f"The checkpoint in {ckpt_dir!r} was written with batch_size="
                    f"{meta.get('batch_size')} on {meta.get('num_samples')} samples; resume with the "
                    "same data and batch_size, or start a new run in another `checkpoint_dir`."
                )
            (params, opt_state, normalisers), meta = load_checkpoint(
                ckpt_dir, (state.params, state.opt_state, normalisers), meta
            )
            state = TrainState(params, opt_state, jnp.asarray(meta["step"], jnp.int32))
            history = meta["history"]
            start_epoch, start_batch = meta["epoch"], meta["batch"]
            loss_sum, loss_count = meta["loss_sum"], meta["loss_count"]
        elif self.normalise:
            normalisers = self.objective.fit_normalisers(data)

        # The step donates its state; copy so the caller's model keeps its arrays.
        state = jax.tree_util.tree_map(jnp.copy, state)
        if self.parallel is not None:
            state = self.parallel.replicate(state)
            normalisers = self.parallel.replicate(normalisers)

        metrics_path = os.fspath(metrics_path) if metrics_path else (
            os.path.join(ckpt_dir, "history.json") if ckpt_dir else None
        )
        # `static` (activations, config) is closed over, so the jitted step sees
        # arrays only and a call costs one dispatch.
        step_fn = jax.jit(
            lambda st, norms, batch, k, prog: self.step(st, static, norms, batch, k, prog),
            donate_argnums=0,
        )
        metrics_fn = self._metrics_fn()

        def checkpoint(epoch, batch, loss_sum, loss_count):
            params, opt_state = jax.device_get((state.params, state.opt_state))
            save_checkpoint(
                ckpt_dir,
                (params, opt_state, jax.device_get(normalisers)),
                {
                    "epoch": epoch, "batch": batch, "step": int(state.step),
                    "loss_sum": loss_sum, "loss_count": loss_count,
                    "history": history, "key": raw_key.tolist(),
                    "batch_size": self.batch_size, "num_samples": n, "epochs": self.epochs,
                },
            )

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.epochs * nb, initial=int(state.step), unit="step", dynamic_ncols=True)
        try:
            for epoch in range(start_epoch, self.epochs):
                prog = _progress(epoch, self.epochs)
                prog_arr = np.asarray(prog, dtype=jnp.result_type(float))
                first = start_batch if epoch == start_epoch else 0
                if epoch != start_epoch:
                    loss_sum, loss_count = 0.0, 0
                step0 = int(state.step)
                keys = np.asarray(_step_keys(step_key, np.arange(step0, step0 + nb - first)))
                losses = []
                t0, last_show, pending = time.perf_counter(), 0.0, 0
                batches = shuffled_batches(data, self.batch_size, data_key, epoch, drop_last=self.drop_last, start=first)
                if not isinstance(data.inputs, np.ndarray):
                    # Reads from disk overlap the step; in-memory slicing is cheaper
                    # than the thread hand-off.
                    batches = prefetch(batches)
                for i, batch in enumerate(batches):
                    b = first + i
                    state, value = step_fn(state, normalisers, self._prepare(batch), keys[i], prog_arr)
                    losses.append(value)
                    if bar is not None:
                        pending += 1
                        now = time.perf_counter()
                        if now - last_show > 0.2:
                            last_show = now
                            bar.update(pending)
                            pending = 0
                            shown = float(value)  # waits for this step: the rate below is real
                            rate = (i + 1) * self.batch_size / (time.perf_counter() - t0)
                            bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{shown:.4g}", samples_s=f"{rate:.1f}")
                    if ckpt_dir and checkpoint_every_steps and int(step0 + i + 1) % checkpoint_every_steps == 0 and b + 1 < nb:
                        for v in jax.device_get(losses):
                            loss_sum += float(v)
                        loss_count += len(losses)
                        losses = []
                        checkpoint(epoch, b + 1, loss_sum, loss_count)
                for v in jax.device_get(losses):
                    loss_sum += float(v)
                loss_count += len(losses)
                jax.block_until_ready(state.params)
                if bar is not None and pending:
                    bar.update(pending)
                elapsed = time.perf_counter() - t0
                record = {
                    "epoch": epoch + 1,
                    "step": int(state.step),
                    "train_loss": loss_sum / max(loss_count, 1),
                    "time_s": elapsed,
                    "samples_per_s": (nb - first) * self.batch_size / elapsed if elapsed > 0 else math.inf,
                    **self.objective.schedule(prog),
                }
                model_now = self.wrap(eqx.combine(self.eval_params(state), static), normalisers)
                if evals and ((epoch + 1) % eval_every == 0 or epoch + 1 == self.epochs):
                    record["eval"] = {
                        name: self.evaluate(model_now, ev, _jitted=metrics_fn) for name, ev in evals.items()
                    }
                history.append(record)
                if bar is not None:
                    bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{record['train_loss']:.4g}",
                                    samples_s=f"{record['samples_per_s']:.1f}")
                if metrics_path:
                    atomic_write_json(metrics_path, history)
                if ckpt_dir and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == self.epochs):
                    checkpoint(epoch + 1, 0, 0.0, 0)
                for cb in callbacks:
                    cb(record, model_now)
        finally:
            if bar is not None:
                bar.close()
        model_out = self.wrap(eqx.combine(jax.device_get(self.eval_params(state)), static), jax.device_get(normalisers))
        return model_out, history


def fit(
    model: eqx.Module,
    train_data,
    *,
    optimiser: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: PRNGKeyArray,
    loss: AbstractLoss | None = None,
    objective: AbstractObjective | None = None,
    normalise: bool = True,
    use_params: bool = False,
    parallel: DataParallel | None = None,
    ema: float | None = None,
    **kwargs,
) -> tuple[Any, list[dict]]:
    """`Trainer(optimiser, loss, objective, epochs, batch_size, ...).fit(model,
    train_data, key=key, **kwargs)`: see `Trainer` and `Trainer.fit`.

    **Returns:** `(trained model, history)`.
    """
    trainer = Trainer(
        optimiser,
        RelativeLp() if loss is None else loss,
        Supervised() if objective is None else objective, epochs=epochs, batch_size=batch_size, normalise=normalise,
        use_params=use_params, parallel=parallel, ema=ema,
    )
    return trainer.fit(model, train_data, key=key, **kwargs)
