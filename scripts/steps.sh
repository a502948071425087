# Time-boxed steps for one-call check scripts (sourced by scripts/gpu_checks.sh).
#
#   OUT=dir STEPS_BUDGET_S=570; source scripts/steps.sh; step NAME LIMIT_S CMD...; exit $status
#
# Each step runs under `timeout` with the smaller of its own limit and what is left of the budget, logs to
# $OUT/NAME.log and its time and exit code to $OUT/steps.csv. A step with under STEPS_MIN_S (20) s of the
# budget left is not started but logged as skipped, so the call ends inside the budget instead of being
# killed part-way. Any failed or skipped step makes $status 1.
: "${OUT:?OUT must name the output folder}"
STEPS_BUDGET_S=${STEPS_BUDGET_S:-570}
STEPS_START=${STEPS_START:-0}  # bash's SECONDS counts from the script's start
STEPS_MIN_S=${STEPS_MIN_S:-20}
status=0
echo "step,limit_s,seconds,exit" > "$OUT/steps.csv"
step() {
  local name=$1 limit=$2 rc t0
  shift 2
  local left=$((STEPS_BUDGET_S - (SECONDS - STEPS_START)))
  if [ "$left" -lt "$STEPS_MIN_S" ]; then
    echo "== $name: skipped (${left}s of the ${STEPS_BUDGET_S}s budget left)" | tee "$OUT/$name.log"
    echo "$name,$limit,0,skipped" >> "$OUT/steps.csv"
    status=1
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc ($((SECONDS - t0))s)"
  echo "$name,$limit,$((SECONDS - t0)),$rc" >> "$OUT/steps.csv"
  [ "$rc" -eq 0 ] || status=1
}
