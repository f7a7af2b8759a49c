#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM pod slice (e.g. v4-32 = 4 workers x 4 chips).
#
#   TPU_NAME=hfr-v4-32 ZONE=us-central2-b DATA_BUCKET=gs://my-bucket/hfrjax \
#   NFS=10.0.0.2:/hfr launch/tpu_pod.sh [setup|train|all]       (default: all)
#
# Optional: CONFIG (default configs/rethink/ms1m.py:variant=red,backbone=ir50,...),
# RUN (run name, default ms1m_red_ir50), JAX_VERSION (default 0.10.2).
# Follow worker 0:  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 \
#                       --command "tail -f ~/hfrjax-pretrain.log"
#
# One JAX process per worker (it drives all of that worker's chips); every worker runs the
# same command, and `--multihost` makes launch/pretrain.py call jax.distributed.initialize(),
# which finds the coordinator (worker 0) and its own process id from the TPU metadata.
#
# Data: every process reads its own slice of each *global* batch (rows
# [p*B/N, (p+1)*B/N) of every batch of the global shuffled order; hfrjax/data/pipeline.py
# module docstring), by random access (pread) into the TFRecord shards. So each worker needs
# *all* shards on a local filesystem at the same path: they are copied from DATA_BUCKET to
# the worker's disk below. The global batch (config input.batch_size) must divide by the
# number of workers, and the run is the same (same batches, same augmentations) for any
# number of workers.
#
# Checkpoints and logs: the workdir must be one shared directory that every worker mounts at
# the same path (here a Filestore NFS share at /mnt/shared). Orbax writes one checkpoint per
# step cooperatively (each process its part of the arrays, process 0 the metadata, then a
# rename makes it visible), the data iterator state is saved per process
# (checkpoints/<step>/data/process_<i>-of-<N>.json), and only process 0 writes
# metrics.jsonl, TensorBoard events and eval reports. The trainer uses local paths (pathlib):
# a gs:// URL does not work as --workdir; mount a bucket with gcsfuse instead if you have no
# NFS (slower, and use --rename-dir-limit so Orbax's atomic renames work).
# Re-running "train" with the same RUN resumes from the latest checkpoint on every worker.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${DATA_BUCKET:?set DATA_BUCKET}"
: "${NFS:?set NFS (Filestore share, ip:/path)}"
CONFIG="${CONFIG:-configs/rethink/ms1m.py:variant=red,backbone=ir50,data_root=/mnt/data/hfrjax}"
RUN="${RUN:-ms1m_red_ir50}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
STAGE="${1:-all}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"
}

if [[ "$STAGE" == setup || "$STAGE" == all ]]; then
  # The repository as it is here (uncommitted changes included), on every worker.
  tar -C "$REPO" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ \
    -czf /tmp/hfrjax.tar.gz .
  gcloud compute tpus tpu-vm scp /tmp/hfrjax.tar.gz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
  on_all_workers "set -e
    rm -rf ~/hfrjax && mkdir ~/hfrjax && tar -C ~/hfrjax -xzf ~/hfrjax.tar.gz
    python3 -m venv ~/hfrjax-venv
    ~/hfrjax-venv/bin/pip install -q -U pip
    ~/hfrjax-venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION' -e ~/hfrjax
    sudo mkdir -p /mnt/shared /mnt/data/hfrjax && sudo chown \$USER /mnt/data/hfrjax
    mountpoint -q /mnt/shared || sudo mount -t nfs -o rw,hard,noatime '$NFS' /mnt/shared
    sudo mkdir -p /mnt/shared/runs && sudo chown \$USER /mnt/shared/runs
    gcloud storage rsync -r '$DATA_BUCKET' /mnt/data/hfrjax"
fi

if [[ "$STAGE" == train || "$STAGE" == all ]]; then
  # Detached, so that a dropped ssh connection does not stop the run; pid kept to stop it:
  # "kill -TERM \$(cat ~/hfrjax-pretrain.pid)" on all workers saves a checkpoint and exits.
  on_all_workers "cd ~/hfrjax && nohup ~/hfrjax-venv/bin/python launch/pretrain.py \
      --config='$CONFIG' --workdir=/mnt/shared/runs/'$RUN' --multihost \
      >> ~/hfrjax-pretrain.log 2>&1 < /dev/null & echo \$! > ~/hfrjax-pretrain.pid"
fi
