"""Alias of launch/train.py (kept for old commands): trains the task the config names.

  python launch/finetune.py --config=configs/quickstart.py:finetune --workdir=/tmp/qs/ft \
      --config.init_from=/tmp/qs/pretrain --config.input.data_dir=/tmp/qs/data/target
"""

import train  # launch/train.py, next to this file.
from absl import app

if __name__ == "__main__":
    app.run(train.main)
