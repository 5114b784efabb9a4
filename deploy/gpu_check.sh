#!/usr/bin/env bash
# One GPU machine, at most 10 minutes: set up the GPU extras, run every gpu-marked test and the GPU
# smoke checks, and write one JSON report with every check's result and timing.
#
#   bash deploy/gpu_check.sh               # on the GPU machine (exit status 0 when no check failed)
#   bash deploy/gpu_check.sh --dry-run     # any machine: list the checks, collect the gpu-marked
#                                          # tests, validate the quickstart overrides, compile the
#                                          # helpers, write the report skeleton
#   options: --report PATH (default runs/gpu_check/report.json), --skip-setup
#
# Checks, in order (timeout in seconds; they add up to the 600 s budget):
#   setup        150  KPOP_EXTRAS=gpu,dev bash deploy/setup.sh (seconds when already done)
#   cuda          30  torch sees a CUDA device; vllm, fla, triton, deepspeed import (else the rest skip)
#   gpu_tests     90  every gpu-marked test (pytest -m gpu), one result per test in the report
#   fla_kernels   40  flash-linear-attention Lightning kernels vs the CPU ops, forward and gradients
#   fp8_gemm      40  the UFP4 FP8 tensor-core GEMM path vs the CPU emulation
#   hybrid_vllm  100  a hybrid checkpoint served by stock vLLM vs the built-in engine's logits
#   quickstart   140  the quickstart, 2 RL steps, vLLM (GPU build) engine + DeepSpeed learner on CUDA
# Each runs under `timeout` with its own limit, cut to what is left of the budget (a check with
# under 20 s left is skipped); its output goes to runs/gpu_check/logs/NAME.log and its result
# (pass / fail / skip, seconds, message: the log's last line, the JSON line every helper in
# deploy/gpu_checks/ ends with) to the report (deploy/gpu_checks/report.py documents its format).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
budget=600
dry=0
skip_setup=0
report="runs/gpu_check/report.json"
while (($#)); do
  case "$1" in
    --dry-run) dry=1 ;;
    --skip-setup) skip_setup=1 ;;
    --report) report="$2"; shift ;;
    *) echo "usage: bash deploy/gpu_check.sh [--dry-run] [--skip-setup] [--report PATH]" >&2; exit 2 ;;
  esac
  shift
done
work="$(dirname "$report")"
logs="$work/logs"
mkdir -p "$logs"
venv="${KPOP_VENV:-$repo/.venv}"
py="$venv/bin/python"
say() { printf '[gpu-check] %s\n' "$*"; }
rep() { python3 deploy/gpu_checks/report.py "$@"; }

CHECKS=(setup cuda gpu_tests fla_kernels fp8_gemm hybrid_vllm quickstart)
declare -A LIMIT=([setup]=150 [cuda]=30 [gpu_tests]=90 [fla_kernels]=40 [fp8_gemm]=40 [hybrid_vllm]=100
                 [quickstart]=140)
mapfile -t gpu_files < <(grep -rlw --include='test_*.py' gpu tests | sort)
qs_steps=2
qs_dir="$work/quickstart"
qs_args=(examples/quickstart.yaml --set "run_dir=$qs_dir" --set sft.steps=20 --set "train.steps=$qs_steps"
         --set train.tasks_per_step=4 --set train.eval_tasks=16 --set learner.num_gpus=0.5
         --set rollout.engine.num_gpus=0.4 --set logging.progress=lines --set logging.tensorboard=false)

command_for() {
  case "$1" in
    setup) echo "KPOP_EXTRAS=gpu,dev bash deploy/setup.sh" ;;
    gpu_tests) echo "$(printf '%q ' "$py" -m pytest -v -m gpu -p no:cacheprovider "${gpu_files[@]}")" ;;
    quickstart) echo "rm -rf $(printf '%q' "$qs_dir") && $(printf '%q ' "$py" -m kpop.cli.main run "${qs_args[@]}")" \
                     "&& $(printf '%q ' "$py" deploy/gpu_checks/quickstart.py "$qs_dir" "$qs_steps")" ;;
    *) echo "$(printf '%q ' "$py" "deploy/gpu_checks/$1.py")" ;;
  esac
}

now() { date +%s.%N; }
t_start="$(now)"
left() { python3 -c "print(int($budget - ($(now) - $t_start)))"; }

# run_check NAME CMD LIMIT: runs CMD under timeout, appends its result to the report; returns its status.
run_check() {
  local name="$1" cmd="$2" limit="$3" log="$logs/$1.log" t0 rc status
  t0="$(now)"
  timeout --kill-after=10 "$limit" bash -c "$cmd" > "$log" 2>&1
  rc=$?
  status=pass
  if ((rc == 124 || rc == 137)); then
    status=fail
    echo "timed out after ${limit}s" >> "$log"
  elif ((rc != 0)); then
    status=fail
  fi
  rep add "$report" "$name" "$status" "$(python3 -c "print($(now) - $t0)")" "$limit" "$log" "$cmd"
  say "$name: $status ($(tail -n 1 "$log" | cut -c1-160))"
  return "$rc"
}

skip_check() {  # NAME REASON
  echo "$2" > "$logs/$1.log"
  rep add "$report" "$1" skip 0 "${LIMIT[$1]}" "$logs/$1.log" "$(command_for "$1")"
  say "$1: skip ($2)"
}

dry_run() {
  rep init "$report" dry-run "$budget"
  say "would check, within ${budget}s in all:"
  for name in "${CHECKS[@]}"; do
    say "  $name (timeout ${LIMIT[$name]}s): $(command_for "$name")"
    skip_check "$name" "dry run: not run"
  done
  local failed=0
  run_check preflight_helpers "python3 -m py_compile deploy/gpu_checks/*.py && echo helpers compile" 60 || failed=1
  local collect spec
  collect="$(printf '%q ' "$py" -m pytest --collect-only -q -m gpu -p no:cacheprovider "${gpu_files[@]}")"
  spec="$(printf '%q ' "$py" -m kpop.cli.main run "${qs_args[@]}" --dry-run)"
  run_check preflight_gpu_tests "$collect" 120 || failed=1
  rep tests "$report" "$logs/preflight_gpu_tests.log"
  run_check preflight_quickstart_spec "$spec" 60 || failed=1
  rep finish "$report"
  say "report: $report"
  return "$failed"
}

real_run() {
  rep init "$report" run "$budget"
  local failed=0 blocked="" name limit
  for name in "${CHECKS[@]}"; do
    limit="$(left)"
    limit=$((limit - 10))  # the report's last write
    if [ "$name" = setup ] && ((skip_setup)); then
      skip_check setup "--skip-setup"
    elif [ -n "$blocked" ]; then
      skip_check "$name" "$blocked"
    elif ((limit < 20)); then
      skip_check "$name" "out of time: ${limit}s of the ${budget}s budget left"
    else
      ((limit > LIMIT[$name])) && limit="${LIMIT[$name]}"
      run_check "$name" "$(command_for "$name")" "$limit" || failed=1
      [ "$name" = cuda ] && [ "$(tail -n 1 "$logs/cuda.log" | grep -c '"ok": true')" = 0 ] \
        && blocked="the cuda check failed: no CUDA device or the gpu extras do not import (logs/cuda.log)"
      [ "$name" = gpu_tests ] && rep tests "$report" "$logs/gpu_tests.log"
    fi
  done
  rep finish "$report"
  say "report: $report"
  return "$failed"
}

if ((dry)); then
  dry_run
else
  real_run
fi
