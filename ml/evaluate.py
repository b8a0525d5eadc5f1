"""`python -m ml.evaluate`: label-propagation evaluation (the code lives in `ml/eval/`).

    python -m ml.evaluate davis --checkpoint checkpoints/run --data /data/DAVIS --output outputs/eval/davis
    python -m ml.evaluate score davis --data /data/DAVIS --results outputs/eval/davis/masks

From Python: `ml.eval.run_evaluation(...)`.
"""

from ml.eval.cli import cli

if __name__ == "__main__":
    cli()
