"""`python -m ml.report`: a table of label-propagation results (the code lives in `ml/eval/report.py`).

    python -m ml.report runs/checkpoints/paper_vit_s16_400 outputs/eval/davis outputs/eval/vip --output outputs/report

From Python: `ml.eval.report.report(paths)` and `write_report(rows, out_dir)`.
"""

from ml.eval.report import cli

if __name__ == "__main__":
    cli()
