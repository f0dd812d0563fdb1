#!/usr/bin/env bash
# The GPU checks of issues 4, 5 and 7, one group per device call (each sized to well under 10 min).
#   bash benchmarks/gpu_checks.sh sampling   # issue 4: generate.py bf16 speed (+ graph check), understand.py (~3 min)
#   bash benchmarks/gpu_checks.sh exact      # issue 4: generate.py in fp32 against the eager reference loop (~2 min)
#   bash benchmarks/gpu_checks.sh training   # issue 7: train_step.py (plain vs ours, stages 2 and 1, each with
#                                            #          sdpa and varlen attention), then memory.py --measure
#                                            #          (7B per-rank shard) (~6 min)
#   bash benchmarks/gpu_checks.sh flex       # issue 7: ours with flex attention for the LLM (~4 min)
#   bash benchmarks/gpu_checks.sh shapes     # issue 5: the ShapesWorld main line, --preset full --no-ablations, then probes
#   bash benchmarks/gpu_checks.sh shapes_eval  # issue 5, after `shapes` on the same warm machine: ShapesEval of its
#                                              #          Stage II / III checkpoints at CFG 3, the counting probe (~3 min)
#   bash benchmarks/gpu_checks.sh shapes_timing  # issue 5: ms per step of each run (60 steps each), then Stage II
#                                                #          at batch 256 with and without compiled layers (~4 min)
#   bash benchmarks/gpu_checks.sh oracle     # issue 5: does the shapes LLM ever learn position questions from perfect
#                                            #          image tokens? ~1.5M questions, with row/column embeddings (~5 min)
#   bash benchmarks/gpu_checks.sh oracle_scratchpad  # issue 5: the same with scratchpad answers ("c2 c5 left") (~5 min)
# Several groups run in order: `bash benchmarks/gpu_checks.sh sampling flex`. Output also goes to $OUT
# (or /tmp) as <group>*.txt, line by line, so a run cut off by a time limit still returns what finished.
# Packages the device image lacks (jsonargparse, for the CLI) travel as wheels in .whl/: run
# `bash benchmarks/device_wheels.sh` here once and name `.whl` in the device call's carry.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
out="${OUT:-/tmp}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, transformers, lightning; print('torch', torch.__version__, '| transformers', transformers.__version__, '| lightning', lightning.__version__)"

run() {  # run NAME SECONDS ARGS...: one python command; all of its output to $out/NAME.txt, and to the
    # console without warnings (but with any line that says failed/error: a CUDA-graph fallback warns)
    local name=$1 limit=$2
    shift 2
    echo "== $name: $PY $*"
    timeout "$limit" "$PY" "$@" 2>&1 | tee "$out/$name.txt" \
        | awk '{l = tolower($0)} l ~ /fail|error|traceback/ || (l !~ /warn/ && l !~ /^[[:space:]]*$/) {print; fflush()}'
    echo "== $name: exit ${PIPESTATUS[0]}"
}

for group in "${@:-sampling}"; do
    case $group in
        sampling)
            run sampling_generate 200 benchmarks/generate.py --check 2 --profile
            run sampling_understand 120 benchmarks/understand.py ;;
        exact)
            # fp32: different kernels rarely meet a near-tie there, so tokens should agree throughout
            run sampling_check 150 benchmarks/generate.py --dtype float32 --images 4 --check 4 --repeats 1 ;;
        training)
            run training_step 400 benchmarks/train_step.py --profile
            run training_memory 200 benchmarks/memory.py --measure --rows 4 ;;
        flex)
            run flex_step 280 benchmarks/train_step.py --attn flex_attention --no-plain --stages 2 ;;
        shapes)
            # checkpoints stay behind in /tmp; the table, sample grids and TensorBoard logs come back
            # cut by the 540 s limit? the same group again on the still-warm machine resumes it (same --out)
            # (SHAPES_ARGS adds pipeline flags: "--smoke 1 --accelerator cpu --precision 32-true" checks this on a CPU)
            run shapes_full 540 -m lit_janus.shapes.pipeline --preset full --no-ablations --out /tmp/shapes_full ${SHAPES_ARGS:-}
            mkdir -p "$out/shapes_full"
            for f in results.md results.json samples tb stage0/stage0.json; do
                [ -e "/tmp/shapes_full/$f" ] && cp -r "/tmp/shapes_full/$f" "$out/shapes_full/"
            done
            # does patch position survive the encoder and the aligner at this scale? (configs/shapes/README.md)
            for st in stage2 stage3; do
                ck=/tmp/shapes_full/$st/checkpoints/last.ckpt
                [ -e "$ck" ] && run "shapes_probe_$st" 25 -m lit_janus.shapes.probe "$ck" --scenes 600
            done ;;
        shapes_eval)
            # after `shapes`, on the same warm machine (its checkpoints are in /tmp/shapes_full): ShapesEval at
            # CFG 3 as well (on the CPU the steadier weight, configs/shapes/README.md), then the counting probe
            for st in stage2 stage3; do
                ck=/tmp/shapes_full/$st/checkpoints/last.ckpt
                [ -e "$ck" ] && run "shapes_cfg3_$st" 90 -m lit_janus.shapes.evaluate_model "$ck" --n 100 --heldout 50 \
                    --vqa 0 --no-ceilings --cfg-weight 3 --failures
            done
            ck=/tmp/shapes_full/stage3/checkpoints/last.ckpt
            [ -e "$ck" ] && run shapes_count_probe 120 -m lit_janus.shapes.count_probe "$ck" --cfg-weight 3 ;;
        shapes_timing)
            # where a ShapesWorld step's time goes on this card (StepTimes: data / step / GPU backlog): every run of
            # the full preset cut to 60 steps, then Stage II at full.yaml's batch (256) for 150 steps from that
            # Stage I checkpoint, plain and with compiled decoder layers (the 4-layer LLM is ~40% of the operators)
            run shapes_timing 100 -m lit_janus.shapes.pipeline --preset full --no-ablations --smoke 60 --out /tmp/shapes_timing
            [ -e /tmp/shapes_timing/results.md ] && cp /tmp/shapes_timing/results.md "$out/shapes_timing.md"
            for compiled in false true; do
                [ -e /tmp/shapes_timing/stage1/checkpoints/last.ckpt ] && run "shapes_timing_compile_$compiled" 90 -c "
from lit_janus.callbacks import StepTimes
from lit_janus.cli import main
cli = main(['fit', '--config', 'configs/shapes/stage2.yaml', '--config', '/tmp/shapes_timing/stage2/overlay.yaml',
            '--data.init_args.global_batch_size', '256', '--trainer.max_steps', '150', '--trainer.logger', 'false',
            '--model.init_args.compile', '$compiled', '--trainer.enable_checkpointing', 'false',
            '--trainer.callbacks', '[{class_path: lit_janus.callbacks.StepTimes, init_args: {skip: 20}}]'])
print('stage2 at batch 256, compile=$compiled:', [cb.summary() for cb in cli.trainer.callbacks if isinstance(cb, StepTimes)])"
            done ;;
        oracle)
            # CPU runs stayed at chance through 96k single questions and 242k in 8-turn conversations (configs/shapes/
            # README.md, "VQA from perfect image tokens"). Here ~1.5M: 2000 steps x 128 scenes x ~6 distinct
            # questions. Drawing scenes on the host bounds it (~0.1 s a step on the 2-core EPYC).
            run oracle_position 330 -m lit_janus.shapes.oracle_vqa --types position --pos2d --turns 8 --steps 2000 \
                --batch 128 --eval-every 250 --out "$out/oracle_position.json" ;;
        oracle_scratchpad)
            # the same, each position answer naming both objects' grid columns (rows) first: on the CPU it left
            # chance after ~250k questions (configs/shapes/README.md). How far does 1.5M take it?
            run oracle_scratchpad 330 -m lit_janus.shapes.oracle_vqa --types position --pos2d --turns 8 --scratchpad \
                --steps 2000 --batch 128 --eval-every 250 --out "$out/oracle_scratchpad.json" ;;
        *)
            echo "unknown group $group (sampling, exact, training, flex, shapes, shapes_eval, shapes_timing, oracle, oracle_scratchpad)"; exit 2 ;;
    esac
done
