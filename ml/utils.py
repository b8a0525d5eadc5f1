"""What the notebook calls, gathered in one place: training (`ml.train`), plots (`ml.plots`), evaluation.

    from ml.utils import train, train_one_epoch
    train(model, data_loader, epochs=60, prefix="run", num_epochs_per_save=10, device=device, config=cfg)
"""

from ml.config import PRESETS, TrainConfig, get_preset  # noqa: F401
from ml.evaluate import evaluate_davis, plot_propagation, run_evaluation, write_synthetic_davis  # noqa: F401
from ml.optim import WarmupCosineSchedule, make_optimizer  # noqa: F401
from ml.plots import (  # noqa: F401
    plot_attention_maps,
    plot_losses,
    plot_pairs,
    plot_results_from_checkpoint,
    plot_sample,
    read_log_columns,
    save_figure,
)
from ml.samples import build_samples, load_samples  # noqa: F401
from ml.train import (  # noqa: F401
    RunPaths,
    build_model,
    evaluate_loss,
    make_test_loader,
    make_train_loader,
    train,
    train_one_epoch,
)
