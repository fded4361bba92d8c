#!/usr/bin/env bash
# Runs the test modules that build, train or run models under torch threads 1 and 2 and under 5 seeds
# (MEDDET_TEST_THREADS / MEDDET_TEST_SEED, read by tests/conftest.py), and prints pass/fail per combination.
# A test whose verdict depends on the CPU, the thread count or the seed fails here on some combination.
# Not part of `make test` (it runs those modules 10 times: about 20-40 minutes on 2 cores).
#
#   scripts/robustness_check.sh                 # the model modules below, threads {1,2} x seeds {0..4}
#   scripts/robustness_check.sh tests/test_xai.py   # only these modules
#   SEEDS="0 1" THREADS="2" scripts/robustness_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"0 1 2 3 4"}
THREADS=${THREADS:-"1 2"}
OUT=${OUT:-output/robustness}
if [ $# -gt 0 ]; then
    MODULES=("$@")
else
    # every module whose tests build, train or run a detector
    MODULES=(tests/test_xai.py tests/test_training.py tests/test_modeling.py tests/test_sliced.py
             tests/test_hub.py tests/test_webapp.py tests/test_d2_engine.py tests/test_d2_convert.py
             tests/test_tiled_tasks.py tests/test_evaluation_tune.py tests/test_experiment.py tests/test_e2e.py)
fi
mkdir -p "$OUT"
printf '| threads | seed | result | log |\n|---|---|---|---|\n' > "$OUT/table.md"
failed=0
for t in $THREADS; do
    for s in $SEEDS; do
        log="$OUT/threads${t}_seed${s}.log"
        # one process (no xdist), so the thread count is the one under test
        if MEDDET_TEST_THREADS=$t MEDDET_TEST_SEED=$s "$PY" -m pytest -q -n 0 -p no:cacheprovider "${MODULES[@]}" \
            > "$log" 2>&1; then
            result="pass ($(tail -n 1 "$log" | tr -d '=' | sed 's/^ *//'))"
        else
            result="FAIL ($(tail -n 1 "$log" | tr -d '=' | sed 's/^ *//'))"
            failed=1
        fi
        printf '| %s | %s | %s | %s |\n' "$t" "$s" "$result" "$log" | tee -a "$OUT/table.md"
    done
done
echo
cat "$OUT/table.md"
exit $failed
