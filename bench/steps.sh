# Sourced by bench/run_cpu.sh and bench/run_gpu.sh. Needs $OUT (the tables' folder) and $LOGS.
#
#   step NAME CMD...   runs CMD: its stdout (the tables) to the console and $OUT/NAME.txt, its stderr to
#                      $LOGS/NAME.log; on failure the log's last lines and exit 1; then the step's time.
step() {
    local name=$1 t0
    shift
    t0=$(date +%s)
    echo
    echo "== $name =="
    # Ray prints "(raylet) ..." notices on stdout when it shuts down: dropped from the tables.
    if ! "$@" 2>"$LOGS/$name.log" | sed -u '/(raylet)/d' | tee "$OUT/$name.txt"; then
        echo "$name failed; last log lines ($LOGS/$name.log):" >&2
        tail -n 30 "$LOGS/$name.log" >&2
        exit 1
    fi
    echo "($name: $(($(date +%s) - t0)) s)"
}
