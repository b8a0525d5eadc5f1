"""Curves of a run: the training and held-out losses against optimiser steps and epochs, with the learning rate.

Colours come from `PALETTE` (Okabe and Ito's colour-blind-safe set); train and held-out never share a colour, and
they differ in marker and line style too, so the figure reads in grey as well.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ml.eval.curve import read_curve
from ml.eval.during_training import read_evals
from ml.training.run import Run

# Okabe & Ito (2008): blue, orange, bluish green, vermillion, reddish purple, sky blue, yellow, black
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
LR_COLOUR = "#777777"
LOSS_LABEL = "loss: MSE on masked patches\n(per-patch normalised pixels)"


def run_colours(k: int) -> tuple[str, str]:
    """(train, held-out) colours of the k-th run of a figure."""
    return PALETTE[(2 * k) % len(PALETTE)], PALETTE[(2 * k + 1) % len(PALETTE)]


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each `window` consecutive values (len(values) - window + 1 of them)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def smoothing_window(n: int) -> int:
    """Steps averaged by the strong training curve: a tenth of the run, between 1 and 50."""
    return max(1, min(50, n // 10))


def epoch_of_step(log: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, epochs) to interpolate between: optimiser steps done against epochs done, from a training log
    whose `step` counts from 0 and whose `epoch` counts from 1 (step s of epoch e ends at s + 1 steps done)."""
    ends = [(0.0, 0.0)]
    for e in np.unique(log["epoch"]):
        ends.append((float(log["step"][log["epoch"] == e].max()) + 1, float(e)))
    steps, epochs = np.array(ends).T
    return steps, epochs


def plain_log_ticks(ax: Any) -> None:
    """Loss values as plain numbers on a log y axis (0.6, not 6 x 10^-1); the in-between ticks labelled too when the
    curve spans less than a decade (otherwise a loss axis may carry no label at all)."""
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high / max(low, 1e-12) < 10 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=8)


def _add_secondary_axis(ax: Any, steps: np.ndarray, epochs: np.ndarray, x_is_step: bool) -> None:
    """A top x axis in the other unit (epochs over a step axis, steps over an epoch axis)."""
    if len(steps) < 2:
        return
    forward = (lambda x: np.interp(x, steps, epochs)) if x_is_step else (lambda x: np.interp(x, epochs, steps))
    inverse = (lambda x: np.interp(x, epochs, steps)) if x_is_step else (lambda x: np.interp(x, steps, epochs))
    top = ax.secondary_xaxis("top", functions=(forward, inverse))
    top.set_xlabel("epochs done" if x_is_step else "optimiser steps done", fontsize=9)


def _plot_run_steps(ax: Any, ax_lr: Any, run: Run, colour: str) -> None:
    log = run.read_train_log()
    x, loss = log["step"] + 1, log["loss"]  # optimiser steps done after each logged step
    window = smoothing_window(len(loss))
    if window > 1:  # a short run has nothing to smooth: its every-step line is the strong one
        ax.plot(x, loss, color=colour, alpha=0.3, linewidth=0.8, label=f"{run.prefix} train, every step")
    ax.plot(x[window - 1:], moving_mean(loss, window), color=colour, linewidth=2.2,
            label=f"{run.prefix} train, " + (f"mean of {window} steps" if window > 1 else "every step"))
    ax_lr.plot(x, log["lr"], color=LR_COLOUR, linestyle=":", linewidth=1.4, label=f"{run.prefix} learning rate")


def _plot_run_epochs(ax: Any, run: Run, train_colour: str, test_colour: str) -> None:
    log = run.read_train_log()
    ends = np.unique(log["epoch"])  # an epoch's training mean sits at its end, where its held-out loss is measured
    ax.plot(ends, [log["loss"][log["epoch"] == e].mean() for e in ends], "o-", color=train_colour, linewidth=2,
            markersize=5, label=f"{run.prefix} train (mean of the epoch)")
    if run.test_losses.is_file():
        test = run.read_test_log()
        if len(test.get("loss", ())):
            ax.plot(test["epoch"], test["loss"], "s--", color=test_colour, linewidth=2, markersize=6,
                    markerfacecolor="white", markeredgewidth=1.8, label=f"{run.prefix} held-out")


def plot_losses(runs: str | Run | Sequence[str | Run], output_dir: str | os.PathLike = ".") -> Figure:
    """Loss curves of one or several runs (a `Run`, or a run name under `output_dir`), loss on a log axis.

    Left, against optimiser steps (epochs on the top axis): the training loss of every step (faint), its moving
    mean (strong) and the learning rate (dotted, right axis). Right, against epochs (steps on the top axis): the
    mean training loss of each epoch (circles, solid) and the held-out loss (squares, dashed, its own colour).
    """
    runs = [runs] if isinstance(runs, (str, Run)) else list(runs)
    if not runs:
        raise ValueError("give at least one run")
    runs = [r if isinstance(r, Run) else Run(output_dir, r) for r in runs]
    for run in runs:
        if not run.losses.is_file():
            raise FileNotFoundError(f"no training log for run {run.prefix!r} at {run.losses}")
    evals = {run.prefix: read_evals(run.evals_csv) for run in runs}
    panels = 3 if any(evals.values()) else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5.2), layout="constrained")
    ax_steps, ax_epochs = axes[:2]
    ax_lr = ax_steps.twinx()
    for k, run in enumerate(runs):
        train_colour, test_colour = run_colours(k)
        _plot_run_steps(ax_steps, ax_lr, run, train_colour)
        _plot_run_epochs(ax_epochs, run, train_colour, test_colour)
    mappings = [epoch_of_step(run.read_train_log()) for run in runs]
    if all(np.array_equal(m[0], mappings[0][0]) for m in mappings):  # one step <-> epoch scale for every run
        _add_secondary_axis(ax_steps, *mappings[0], x_is_step=True)
        _add_secondary_axis(ax_epochs, *mappings[0], x_is_step=False)
    ax_steps.set(title="training loss per optimiser step", xlabel="optimiser steps done", ylabel=LOSS_LABEL,
                 yscale="log")
    ax_lr.set_ylabel("learning rate", color=LR_COLOUR)
    ax_lr.tick_params(axis="y", colors=LR_COLOUR)
    ax_epochs.set(title="per epoch: training and held-out loss", xlabel="epochs done", ylabel=LOSS_LABEL,
                  yscale="log")
    handles = ax_steps.get_legend_handles_labels()
    lr_handles = ax_lr.get_legend_handles_labels()
    below = dict(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=9, frameon=False)
    ax_steps.legend(handles[0] + lr_handles[0], handles[1] + lr_handles[1], **below)
    ax_epochs.legend(**below)
    for ax in (ax_steps, ax_epochs):
        ax.grid(alpha=0.3, which="both")
        plain_log_ticks(ax)
    if panels == 3:
        _plot_evals(axes[2], runs, evals)
    fig.suptitle("loss curves: " + ", ".join(run.prefix for run in runs), fontsize=12)
    return fig


def _plot_evals(ax: Any, runs: list[Run], evals: dict[str, list[dict[str, Any]]]) -> None:
    """DAVIS J&F of the evaluations during training (`--eval-every`) against epochs: is correspondence improving?"""
    for k, run in enumerate(runs):
        rows = [r for r in evals[run.prefix] if r["benchmark"] == "davis"]
        if rows:
            protocol = rows[-1]["protocol"]
            ax.plot([r["epoch"] for r in rows], [r["J&F-Mean"] for r in rows], "D-", color=run_colours(k)[0],
                    linewidth=2, markersize=6, label=f"{run.prefix} ({protocol} protocol)")
    ax.set(title="label propagation during training", xlabel="epochs done", ylabel="DAVIS J&F (mean of J and F, 0-1)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=1, fontsize=9, frameon=False)


def plot_correspondence_curve(curve: str | os.PathLike | Sequence[dict[str, Any]]) -> Figure:
    """The learning curve of `python -m ml.evaluate curve` (its curve.csv or rows): a panel per dataset, J&F against
    optimiser steps, a colour per encoder input size; the trained checkpoints as circles on solid lines, random
    initialisation (dashed) and raw pixels (dotted) as flat lines of the same colour. Does training help?"""
    rows = read_curve(curve) if isinstance(curve, (str, os.PathLike)) else list(curve)
    if not rows:
        raise ValueError("the learning curve has no rows")
    datasets = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.8), layout="constrained", squeeze=False)
    for ax, data in zip(axes[0], datasets):
        mine = [r for r in rows if r["data"] == data]
        steps = [r["step"] for r in mine if r["encoder"] == "epoch"] or [0]
        span = (min(0, *steps), max(1, *steps))
        for k, size in enumerate(dict.fromkeys(r["size"] for r in mine)):
            colour = PALETTE[k % len(PALETTE)]
            trained = sorted((r["step"], r["J&F-Mean"]) for r in mine if r["size"] == size and r["encoder"] == "epoch")
            if trained:
                ax.plot(*zip(*trained), "o-", color=colour, linewidth=2, label=f"{size}: trained")
            for encoder, style in (("random", "--"), ("pixels", ":")):
                flat = [r["J&F-Mean"] for r in mine if r["size"] == size and r["encoder"] == encoder]
                if flat:
                    ax.plot(span, [flat[0], flat[0]], style, color=colour, linewidth=1.5, label=f"{size}: {encoder}")
        ax.set(title=f"label propagation on {data}", xlabel="optimiser steps done", ylabel="J&F (0-1)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, fontsize=8, frameon=False)
    fig.suptitle("does training improve correspondence? (input size: short side or HxW)", fontsize=12)
    return fig
