#!/usr/bin/env bash
# livetrace end to end: a multithreaded program traced live, first by itself
# (every tracer, every output), then from outside with the `livetrace`
# command: attach, list, trace, report, patch, detach. Outputs go to
# livetrace-out/.
set -euo pipefail
cd "$(dirname "$0")"
out=livetrace-out
mkdir -p "$out"

echo "== building (release)"
cargo build --release -q -p livetrace --example shop
cargo build --release -q -p livetrace-cli --bin livetrace
shop=target/release/examples/shop
lt=target/release/livetrace

run() {
  echo
  echo "\$ livetrace $*"
  "$lt" "$@"
}

echo
echo "== 1. the shop traces itself: each tracer on for a moment, every output written"
"$shop" "$out"

echo
echo "== 2. the same shop as another process; attach to it with the livetrace command"
"$shop" --serve 60 > "$out/shop-serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$lt" ps 2>/dev/null | grep -q "^ *$pid " && break
  sleep 0.1
done
run ps
run ls "$pid" 'shop::*'
run trace "$pid" -f 'shop::checkout' -f 'shop::price_line' -f 'shop::tax' -t graph -d 200ms 2>&1 | head -n 20
run trace "$pid" -f 'shop::*' -t graph -d 500ms -o "$out/attached.json"
run trace "$pid" -f 'shop::*' -t graph -d 500ms -o "$out/attached.svg"
run report "$pid" -f 'shop::*' -d 1s
run ls "$pid" --enabled
echo
echo "detached: every site is a NOP again, and the shop kept serving throughout."
echo "outputs are in $out/ (open trace.json or attached.json in https://ui.perfetto.dev,"
echo "flame.svg in a browser, 'uftrace replay -d $out/uftrace.data')"
