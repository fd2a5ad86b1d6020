#!/usr/bin/env bash
# Run every fuzz target of dspyo3-kernels for SECONDS (default 30) each, starting from the seeds in seeds/<target>
# and the corpus the earlier runs kept in corpus/<target>. Needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly`, `cargo install --locked cargo-fuzz`). A crash leaves its input in
# artifacts/<target>/ and fails the run; replay it with `cargo +nightly fuzz run <target> artifacts/<target>/<file>`.
set -euo pipefail
seconds="${1:-30}"
cd "$(dirname "$0")"
cargo +nightly fuzz build -O
for target in sse_stream wire_completion bm25_load; do
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  if cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
    echo "fuzz $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1), no crash"
    rm -f "$log"
  else
    tail -n 60 "$log"
    echo "fuzz $target: FAILED (input kept in $(pwd)/artifacts/$target/)" >&2
    exit 1
  fi
done
