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
# resume automatically after a requeue: the stage's last checkpoint, if any (restored first, in this one
# process, if the job was killed between a save's two renames: lit_janus.atomic.recover_replaced)
NAME=$(basename "$(dirname "$CONFIG")")_$(basename "$CONFIG" .yaml)
LAST=runs/${NAME}/checkpoints/last.ckpt
RESUME=()
python -c "import sys; from pathlib import Path; from lit_janus.atomic import recover_replaced; recover_replaced(Path(sys.argv[1]))" "$LAST"
[ -e "$LAST" ] && RESUME=(--ckpt_path "$LAST")
srun python main.py fit --config "$CONFIG" --trainer.num_nodes "$SLURM_NNODES" \
    --trainer.devices "$SLURM_NTASKS_PER_NODE" "${RESUME[@]}" "$@"
