#!/system/bin/sh
# Android device agent: runs LiteRT's benchmark_model for one job and leaves its results in a directory.
#
# usage: sh run_job.sh OUT_DIR BENCHMARK_BIN MEMINFO_INTERVAL_S AFFINITY_MASK THERMAL_DIR BATTERY_TEMP_FILE \
#            -- BENCHMARK_FLAGS...
#
#   OUT_DIR              result directory (created; an older DONE marker in it is removed first)
#   BENCHMARK_BIN        the benchmark_model executable on the device
#   MEMINFO_INTERVAL_S   seconds between `dumpsys meminfo PID` samples while the benchmark runs
#   AFFINITY_MASK        hex CPU mask for `taskset`, or "" to run without pinning
#   THERMAL_DIR          usually /sys/class/thermal (its thermal_zone*/type and temp are recorded)
#   BATTERY_TEMP_FILE    usually /sys/class/power_supply/battery/temp (tenths of a degree C);
#                        when unreadable, `dumpsys battery` is recorded instead
#
# Leaves in OUT_DIR: thermal_before.txt thermal_after.txt (zone<TAB>type<TAB>millidegrees per line),
# battery_before.txt battery_after.txt, started_at ended_at (unix seconds), pid (of benchmark_model),
# stdout.txt stderr.txt (of benchmark_model), meminfo.txt (samples, each after an
# "@@sample N UNIX_SECONDS" line), exit_code, and last DONE (holding the exit code), written by rename
# so that a reader that sees DONE sees every other file complete.
#
# POSIX sh only: it runs under Android's mksh with toybox tools (and under /bin/sh in the tests).
# The host quotes every argument; this script quotes every expansion.

trap '' HUP  # survive the end of the adb shell session that started it (children inherit this)

if [ "$#" -lt 6 ]; then
    echo "run_job.sh: expected OUT_DIR BIN MEMINFO_INTERVAL_S AFFINITY_MASK THERMAL_DIR BATTERY_FILE -- FLAGS" >&2
    exit 64
fi
out=$1
bin=$2
interval=$3
mask=$4
thermal_dir=$5
battery_file=$6
shift 6
if [ "${1-}" = "--" ]; then
    shift
fi

mkdir -p "$out" || exit 65
rm -f "$out/DONE" "$out/DONE.tmp" "$out/exit_code" "$out/rc.tmp"

thermal() {
    for z in "$thermal_dir"/thermal_zone*; do
        [ -d "$z" ] || continue
        printf '%s\t%s\t%s\n' "${z##*/}" "$(cat "$z/type" 2>/dev/null)" "$(cat "$z/temp" 2>/dev/null)"
    done
}

battery() {
    if [ -r "$battery_file" ] && cat "$battery_file" 2>/dev/null; then
        return 0
    fi
    dumpsys battery 2>/dev/null
}

now() {
    date +%s 2>/dev/null || echo 0
}

thermal > "$out/thermal_before.txt" 2>/dev/null
battery > "$out/battery_before.txt" 2>/dev/null
now > "$out/started_at"
: > "$out/meminfo.txt"

# The benchmark runs in a background subshell that records its exit code; this shell samples its
# memory meanwhile. `taskset MASK CMD` execs CMD, so the pid in "$out/pid" is benchmark_model's.
(
    if [ -n "$mask" ]; then
        taskset "$mask" "$bin" "$@" > "$out/stdout.txt" 2> "$out/stderr.txt" &
    else
        "$bin" "$@" > "$out/stdout.txt" 2> "$out/stderr.txt" &
    fi
    bpid=$!
    echo "$bpid" > "$out/pid"
    wait "$bpid"
    echo "$?" > "$out/rc.tmp"
) < /dev/null &
runner=$!

n=0
while [ ! -f "$out/rc.tmp" ]; do
    pid=$(cat "$out/pid" 2>/dev/null)
    if [ -n "$pid" ]; then
        echo "@@sample $n $(now)" >> "$out/meminfo.txt"
        dumpsys meminfo "$pid" >> "$out/meminfo.txt" 2>&1
        n=$((n + 1))
    fi
    [ -f "$out/rc.tmp" ] && break
    sleep "$interval"
done
wait "$runner" 2>/dev/null

rc=$(cat "$out/rc.tmp" 2>/dev/null)
[ -n "$rc" ] || rc=255
now > "$out/ended_at"
thermal > "$out/thermal_after.txt" 2>/dev/null
battery > "$out/battery_after.txt" 2>/dev/null
echo "$rc" > "$out/exit_code"
echo "$rc" > "$out/DONE.tmp"
mv -f "$out/DONE.tmp" "$out/DONE"
exit 0
