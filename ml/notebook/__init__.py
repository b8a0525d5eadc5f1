"""What SiamMAE.ipynb shows and how it runs headless: one function per notebook cell (cells.py), the figures
(plots.py), samples.pickle (samples.py), the analyses of what the decoder uses (analysis.py) and the runner
behind `make demo` (demo.py). The top layer: calls into `ml.training`, `ml.eval` and `ml.model`."""
