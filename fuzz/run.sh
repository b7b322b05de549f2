#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: fuzz/run.sh SECONDS [TARGET...]
#
# SECONDS is per target (default 60). Needs cargo-fuzz (`cargo install cargo-fuzz`) and a
# nightly toolchain: `cargo +nightly` when rustup has one, else the stable toolchain with
# RUSTC_BOOTSTRAP=1 (what `-Zsanitizer` and the coverage flags need). Builds with
# AddressSanitizer, optimisation and debug assertions (so integer overflow panics).
#
# The working corpus is fuzz/corpus/<target>/ (not committed), started from the
# committed seeds in fuzz/seeds/<target>/ (see fuzz/make_seeds.py). A failing input is
# saved in fuzz/artifacts/<target>/ and the script exits non-zero; copy it into
# fuzz/regressions/<target>/ once fixed, where `cargo test` in fuzz/ replays it.
# Prints, per target, the executions, the run time and the final coverage.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(gso_split handle_gro_vec handle_gro_fixed virtio_decode aead_open wireguard_device)
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo_fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
fi
flags=(-O -a)

"${cargo_fuzz[@]}" build "${flags[@]}"

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/last-run.log"
    start=$(date +%s)
    # -rss_limit_mb: a leak or runaway allocation fails the run; -max_len: a 64 KiB
    # super-packet plus the control bytes.
    if "${cargo_fuzz[@]}" run "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -max_len=70000 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        tail -n 60 "$log"
    fi
    elapsed=$(($(date +%s) - start))
    execs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || echo '?')
    line="$t: $result, $execs executions in ${elapsed}s, coverage $cov, corpus $(find "fuzz/corpus/$t" -type f | wc -l) inputs"
    echo "$line"
    summary+=("$line")
done
echo
printf '%s\n' "${summary[@]}"
exit $status
