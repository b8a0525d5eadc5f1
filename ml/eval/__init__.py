"""Evaluation by label propagation with frozen features: DAVIS-2017 (J&F), JHMDB (PCK), VIP (mIoU).

One job per module:
    data.py         dataset readers, label images
    synthetic.py    generated data in the three layouts (coloured discs; real texture from the sample clips)
    correspondence.py  the generated correspondence benchmark (held-out texture, exact masks; `make-benchmark`)
    curve.py        J&F of a run's checkpoints against steps beside random init and pixels (`curve`)
    protocols.py    the named protocols (crw, causal, dino): every choice that changes a number
    encoders.py     what can be evaluated (checkpoints, MAE files, random init, pixels), weight fingerprints
    features.py     input sizes, resizing, the encoder pass, labels to and from the feature grid, memory estimate
    propagation.py  the context queue, affinities, top-k, weighted labels
    metrics.py      J and F as the official DAVIS scorer, PCK, mIoU
    store.py        the output folder: run.json, per-sequence results and their hashes
    benchmarks.py   DAVIS / JHMDB / VIP and the one driver loop they share
    keypoints.py    JHMDB joints to and from heatmaps on the feature grid
    score.py        scoring any folder of predicted masks
    plots.py        propagated masks over the frames
    cli.py          run_evaluation and `python -m ml.evaluate`
    during_training.py  label propagation every K epochs of a run (`--eval-every`), evals.csv
    report.py       results of runs and evaluation folders in one table beside the published ones (`ml.report`)
    export.py       a run's encoder as a timm model with its config and model card (`python -m ml.export`)
"""

from ml.eval.benchmarks import run_benchmark  # noqa: F401
from ml.eval.cli import main, run_evaluation  # noqa: F401
from ml.eval.during_training import evaluation_hook, read_evals  # noqa: F401
from ml.eval.encoders import PixelEncoder, load_encoder, weights_fingerprint  # noqa: F401
from ml.eval.features import FeatureExtractor  # noqa: F401
from ml.eval.plots import plot_propagation  # noqa: F401
from ml.eval.protocols import PROTOCOLS, Protocol, get_protocol  # noqa: F401
from ml.eval.score import score_davis, score_vip  # noqa: F401
from ml.eval.synthetic import write_synthetic_davis  # noqa: F401
