"""`python -m ml.demo`: run SiamMAE.ipynb headless into one folder (what `make demo` runs; code in
`ml/notebook/demo.py`).

    python -m ml.demo --output outputs/demo                 # the CPU demo on dataset/sample
    python -m ml.demo --output /tmp/check --setting quick   # a seconds-long check
"""

from ml.notebook.demo import main

if __name__ == "__main__":
    main()
