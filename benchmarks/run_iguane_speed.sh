#!/usr/bin/env bash
# Headline speed numbers of IGUANe on CPU (issue #13), in one command, on an IDLE machine.
#
#   benchmarks/run_iguane_speed.sh            # about 8-10 minutes on an idle 2-core machine
#
# Writes, with the load average before and after every phase and the CPU's flags:
#   benchmarks/results/iguane_inference.md  one 160x192x160 volume, harmonix (its defaults:
#       float32, PyTorch's thread count; beside it num_threads="auto", 1 thread, and bfloat16
#       where the CPU has AVX512-BF16 or AMX) vs Keras in TF with TF_ENABLE_ONEDNN_OPTS=1
#       (TF's faster setting on AVX2 CPUs, default threads), idle, then with 2 busy
#       background processes started by the script; peak RSS of harmonix in float32 and
#       bfloat16; max abs diff to the plain float32 pass. (TF's default, Eigen, is about 2x
#       slower on AVX2 CPUs: add "keras" to --variants to time it too, several minutes more.)
#   benchmarks/results/iguane_training_speed.md   seconds per site-step, counted conv GFLOP,
#       GFLOP/s, oneDNN conv3d limit, harmonix (defaults, cpu_threads="auto", and bfloat16
#       where native) vs the TF site-step (_helpers/tf_iguane_step.py), CPU recipe and width 16 on
#       48x64x48, idle then with 1 busy background process; torch.profiler table of the
#       CPU recipe
# On a CPU without native bfloat16 the bf16 variants are left out of the timings (emulated,
# many times slower); bf16 memory and accuracy are measured anyway (and in
# benchmarks/bench_iguane_bf16.py).
# On a CPU with AVX512-BF16 or AMX (grep -wE 'avx512_bf16|amx_bf16' /proc/cpuinfo) this
# script times the bf16 variants too (inference ratio to Keras float32, goal <= 0.7x; the
# training site-step ratio); issue 26's other bf16 figures there take one command each:
#   python benchmarks/bench_iguane_bf16.py          # SSIM(bf16, float32), traveling SSIM
#   python benchmarks/check_bf16_training.py --repeats 50 --without-rule   # 50 trainings
# The full-size training site-step (160x192x160) is not part of the 10 minutes; run it
# separately (about 4-6 minutes idle):
#   .venv-bench/bin/python benchmarks/bench_iguane_training_speed.py --configs full \
#       --variants harmonix "tf onednn" --append      # add "harmonix bf16" where native
#
# Needs the benchmark environment (.venv-bench: harmonix installed editable, tensorflow,
# tf-keras, h5py, nilearn); PY=... selects another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-bench/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=

load=$(cut -d' ' -f1 /proc/loadavg)
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
if ! awk -v l="$load" 'BEGIN { exit !(l < 1.5) }'; then
    echo "WARNING: the machine is not idle (1-minute load $load >= 1.5): the 'idle' phases" \
         "will be marked as loaded in the results." >&2
fi
start=$(date +%s)
bf16=()
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
    bf16=("harmonix bf16")
fi
"$PY" benchmarks/bench_iguane_inference.py --sizes 1mm --repeats 3 --busy 2 \
    --variants "keras onednn" harmonix "harmonix auto threads" "harmonix 1 thread" "${bf16[@]}"
"$PY" benchmarks/bench_iguane_training_speed.py --configs recipe w16 --rounds 2 --steps 2 \
    --busy 1 --profile 2 --variants harmonix "harmonix auto threads" "tf onednn" "${bf16[@]}"
echo "done in $(( $(date +%s) - start )) s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
