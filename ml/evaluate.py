"""`python -m ml.evaluate`: label-propagation evaluation (the code lives in `ml/eval/`).

    python -m ml.evaluate davis --checkpoint checkpoints/run --data /data/DAVIS --output outputs/eval/davis
    python -m ml.evaluate score davis --data /data/DAVIS --results outputs/eval/davis/masks
"""

from ml.eval import (  # noqa: F401  (what the notebook and older code import from here)
    FeatureExtractor,
    PixelEncoder,
    evaluate,
    get_protocol,
    load_encoder,
    main,
    plot_propagation,
    run_evaluation,
    score_davis,
    score_vip,
    weights_fingerprint,
    write_synthetic_davis,
)
from ml.eval.cli import cli

if __name__ == "__main__":
    cli()
