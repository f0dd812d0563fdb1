#!/bin/bash
# Multi-node training under SLURM: one task per GPU; Lightning reads SLURM's environment.
#   sbatch scripts/slurm_fit.sh configs/janus_pro_7b/stage2.yaml [extra CLI args]
#SBATCH --job-name=lit_janus
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --requeue
set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_fit.sh CONFIG [args...]}
shift
# resume automatically after a requeue: the stage's last checkpoint, if any (only last.ckpt.old when killed
# between a save's two renames: lit_janus.callbacks.Checkpoint restores last.ckpt before it is loaded)
NAME=$(basename "$(dirname "$CONFIG")")_$(basename "$CONFIG" .yaml)
LAST=runs/${NAME}/checkpoints/last.ckpt
RESUME=()
{ [ -e "$LAST" ] || [ -e "$LAST.old" ]; } && RESUME=(--ckpt_path "$LAST")
srun python main.py fit --config "$CONFIG" --trainer.num_nodes "$SLURM_NNODES" \
    --trainer.devices "$SLURM_NTASKS_PER_NODE" "${RESUME[@]}" "$@"
