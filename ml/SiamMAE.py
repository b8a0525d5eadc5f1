"""The seed's model interface, kept at the seed's path: a thin face over `ml.model` and `ml.training.checkpoint`.

    model = SiamMAE(img_size=224, decoder_type="cross_self")     # or create_model("siammae_vit_small_patch16")
    decoder = CrossDecoder(embed_dim=384)
    model = prepare_model("checkpoints/run")                    # a run's latest checkpoint, or any checkpoint file
    path = download_pretrained_model("mae_pretrain_vit_base", "checkpoints/mae")

New code imports from the layers themselves: `ml.model` (the network), `ml.training.checkpoint` (loading).
"""

from mae.pretrained import download_pretrained_model
from ml.model import CrossDecoder, SiamMAE, create_model
from ml.training.checkpoint import prepare_model

__all__ = ["CrossDecoder", "SiamMAE", "create_model", "download_pretrained_model", "prepare_model"]
