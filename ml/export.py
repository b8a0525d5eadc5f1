"""`python -m ml.export`: a run's encoder as a timm model for the Hugging Face Hub (the code: `ml/eval/export.py`).

    python -m ml.export runs/checkpoints/paper_vit_s16_400 outputs/hub/siammae-vit-s16
    hf upload <user>/<repo> outputs/hub/siammae-vit-s16 .      # huggingface_hub's CLI (after `hf auth login`)

From Python: `ml.eval.export.export(run, out)`.
"""

from ml.eval.export import cli

if __name__ == "__main__":
    cli()
