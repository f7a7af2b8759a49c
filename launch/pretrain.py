"""Alias of launch/train.py (kept for old commands): trains the task the config names.

  python launch/pretrain.py --config=configs/quickstart.py:pretrain --workdir=/tmp/qs/pretrain \
      --config.input.data_dir=/tmp/qs/data/source
"""

import train  # launch/train.py, next to this file.
from absl import app

if __name__ == "__main__":
    app.run(train.main)
