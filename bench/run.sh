#!/usr/bin/env bash
# make bench: tether side by side with the peers of ../shared/bench/peers (C, Go, Python, luv,
# luaposix). Builds the peers into a temporary directory, runs every program of a case REPS
# times interleaved (round 1 runs each once, then round 2, ...), and prints one markdown table
# per case: median of REPS, min - max, and the ratio tether / peer with the issue's target.
# Every program runs N operations in one process and prints ONE number on its last stdout line
# (a rate or a per-op median; see the peers' bench.h). Peers whose toolchain is missing are
# skipped with a note.
# Usage: bench/run.sh [CASE...]   CASE: 1 2 3 4 5 6 7 8 9 sys nginx (default: all)   env: REPS=3 LUA_BIN=lua5.4
# Case 6 reads files made in $BENCH_FILES (default /tmp/tether-bench-files; kept between runs).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/bench
PEERS=${PEERS:-$REPO/../shared/bench/peers}
REPS=${REPS:-3}
LUA_BIN=${LUA_BIN:-${TETHER_LUA:-lua5.4}}
LUA_VER=$($LUA_BIN -e 'io.write((_VERSION:gsub("Lua ", "")))' 2>/dev/null || echo 5.4)
: "${LUA_PATH:=$REPO/lua/?.lua;$REPO/lua/?/init.lua;;}"
: "${LUA_CPATH:=$REPO/build/$LUA_VER/?.so;;}"
export LUA_PATH LUA_CPATH
B=$(mktemp -d /tmp/tether-bench.XXXXXX)
LOG=$REPO/build/$LUA_VER/bench.log
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
trap 'rm -rf "$B"' EXIT
export GOCACHE=${GOCACHE:-$B/gocache} GOPATH=${GOPATH:-$B/gopath} GOFLAGS=-trimpath
T0=$SECONDS
TL="$LUA_BIN $HERE"   # tether scripts: "$TL/tether_x.lua args"

note() { echo "> note: $*"; }
has() { command -v "$1" >/dev/null 2>&1; }

# ---- toolchains and peers --------------------------------------------------------------------
[ -d "$PEERS" ] || { echo "peers not found at $PEERS" >&2; exit 1; }
$LUA_BIN -e 'require "tether.exec"' 2>>"$LOG" || { echo "tether does not load with $LUA_BIN (make first)" >&2; exit 1; }
HAVE_C=0 HAVE_GO=0 HAVE_PY=0 HAVE_LUV=0 HAVE_POSIX=0 HAVE_TIME=0
NOTES=()
if has gcc; then
  HAVE_C=1
  for f in c_spawn_vfork c_spawn_posix_spawn c_spawn_fork c_capture c_capture2 c_signal_selfpipe c_signalfd c_readfiles c_tasks; do
    gcc -O2 -Wall -o "$B/$f" "$PEERS/$f.c" -lpthread >>"$LOG" 2>&1 || { echo "build failed: $f.c (see $LOG)" >&2; exit 1; }
  done
else NOTES+=("gcc missing: C peers skipped (Debian: gcc)"); fi
if has go; then
  HAVE_GO=1
  for f in go_spawn go_capture go_capture2 go_signal go_readfiles go_tasks; do
    (cd "$PEERS" && go build -o "$B/$f" "$f.go") >>"$LOG" 2>&1 || { NOTES+=("go build $f.go failed: skipped"); }
  done
else NOTES+=("go missing: Go peers skipped (Debian: golang-go)"); fi
if has python3; then HAVE_PY=1; PY=$(python3 -c 'import sys; print(sys.executable)')
else NOTES+=("python3 missing: Python peers skipped (Debian: python3)"); fi
if has lua5.4 && lua5.4 -e 'require "luv"' 2>/dev/null; then HAVE_LUV=1
else NOTES+=("lua5.4 with luv missing: luv peers skipped (Debian: lua-luv)"); fi
if has lua5.3 && lua5.3 -e 'require "posix.unistd"; require "luv"' 2>/dev/null; then HAVE_POSIX=1
else NOTES+=("lua5.3 with luaposix and luv missing: luaposix peers skipped (Debian: lua5.3 lua-posix lua-luv)"); fi
[ -x /usr/bin/time ] && /usr/bin/time -f %M true >/dev/null 2>&1 && HAVE_TIME=1 ||
  NOTES+=("GNU time missing: peers' peak RSS not measured (Debian: time)")
peer() { [ -x "$B/$1" ]; }

# ---- table machinery -------------------------------------------------------------------------
# add LABEL CMD [TARGET]: a row; the first row of a case is tether's, the others get the ratio
# tether / row with TARGET (">=0.9", "<=1.25") checked. TARGET "ref" makes the row the one the
# first row is compared to, and shows the ratio there instead.
LABELS=() CMDS=() TARGETS=() MEDIANS=()
add() { LABELS+=("$1"); CMDS+=("$2"); TARGETS+=("${3:-}"); }

fmt() { awk -v x="$1" 'BEGIN { if (x >= 100) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else printf "%.2f", x }'; }

# run_case ID TITLE UNIT BETTER(higher|lower) TIMEOUT_S
run_case() {
  local id=$1 title=$2 unit=$3 better=$4 tmo=$5 r i out rc
  local -a vals=()
  local t=$SECONDS
  for ((r = 1; r <= REPS; r++)); do
    for i in "${!LABELS[@]}"; do
      echo "### [case $id] ${LABELS[i]} (round $r): ${CMDS[i]}" >>"$LOG"
      out=$(cd "$B" && timeout "$tmo" bash -c "${CMDS[i]}" 2>"$B/err.$id.$i.$r")
      rc=$?
      cat "$B/err.$id.$i.$r" >>"$LOG"
      out=$(printf '%s\n' "$out" | tail -n 1)
      if [ $rc -ne 0 ] || ! [[ $out =~ ^[0-9.]+$ ]]; then
        [ $rc = 124 ] && out="TIMEOUT>${tmo}s" || out="FAIL(rc=$rc)"
      fi
      echo "result: $out" >>"$LOG"
      vals[i]="${vals[i]:-} $out"
    done
  done
  echo
  echo "#### $title"
  echo
  echo "| program | median of $REPS | min - max | unit ($better is better) | tether / this | target |"
  echo "|---|---:|---:|---|---:|---|"
  MEDIANS=()
  for i in "${!LABELS[@]}"; do
    local v=${vals[i]}
    if [[ $v =~ [A-Z] ]]; then MEDIANS[i]=""; continue; fi
    MEDIANS[i]=$(echo $v | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {
      m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%s %s %s", m, a[1], a[NR] }')
  done
  local tm=${MEDIANS[0]%% *}
  for i in "${!LABELS[@]}"; do
    if [ -z "${MEDIANS[i]}" ]; then
      echo "| ${LABELS[i]} | not measured: $(echo ${vals[i]} | tr ' ' '\n' | grep -m1 '[A-Z]') | | $unit | | |"
      continue
    fi
    set -- ${MEDIANS[i]}
    local ratio="" verdict="" tgt=${TARGETS[i]}
    if [ "$i" -gt 0 ] && [ -n "$tm" ]; then
      ratio=$(awk -v a="$tm" -v b="$1" 'BEGIN{printf "%.2f", a/b}')
      if [ -n "$tgt" ]; then
        local op=${tgt:0:2} lim=${tgt:2}
        if awk -v x="$ratio" -v l="$lim" -v op="$op" 'BEGIN{exit !((op == ">=") ? x >= l : x <= l)}'
        then verdict="$op $lim: met"
        else verdict="$op $lim: **MISSED** ($(awk -v x="$ratio" -v l="$lim" 'BEGIN{printf "%+.0f%%", (x / l - 1) * 100}'))"; fi
      fi
    fi
    echo "| ${LABELS[i]} | $(fmt "$1") | $(fmt "$2") - $(fmt "$3") | $unit | $ratio | $verdict |"
  done
  echo
  echo "_(case wall time: $((SECONDS - t)) s)_"
}
reset_rows() { LABELS=() CMDS=() TARGETS=(); }
# median of the numbers on stdin
med() { sort -g | awk '{a[NR]=$1} END { if (NR) printf "%s", NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2 }'; }

# ---- cases -----------------------------------------------------------------------------------
facts() {
  echo "#### Machine"
  echo
  echo '```'
  echo "kernel $(uname -r), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "tether: $($LUA_BIN -v 2>&1 | head -n 1), git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src lua 2>/dev/null || echo '+dirty(src,lua)')"
  echo "peers:  gcc=$HAVE_C go=$HAVE_GO$(has go && echo " ($(go version | cut -d' ' -f3))") python=$HAVE_PY luv=$HAVE_LUV luaposix=$HAVE_POSIX REPS=$REPS"
  echo '```'
  local n
  for n in "${NOTES[@]}"; do note "$n"; done
}

spawn_rows() {   # $1 = N, $2 = heap MiB, $3 = N for fork-based peers
  local a="$1 $2" f="$3 $2"
  peer c_spawn_vfork && add "C vfork+execve+waitpid" "./c_spawn_vfork $a" "${4:-}"
  peer c_spawn_posix_spawn && add "C posix_spawn+waitpid" "./c_spawn_posix_spawn $a"
  peer go_spawn && add "Go exec.Command.Run" "./go_spawn $a" "${5:-}"
  [ $HAVE_PY = 1 ] && add "Python subprocess.run" "$PY $PEERS/py_spawn.py $a"
  peer c_spawn_fork && add "C fork+execve+waitpid (N=$3)" "./c_spawn_fork $f"
  [ $HAVE_LUV = 1 ] && add "luv uv.spawn + uv.run (N=$3)" "lua5.4 $PEERS/luv_spawn.lua $f"
  [ $HAVE_POSIX = 1 ] && add "luaposix fork+execp+wait, Lua 5.3 (N=$3)" "lua5.3 $PEERS/luaposix_spawn.lua $f"
}

case1() {
  reset_rows
  add "**tether** exec.command(\"/bin/true\"):run()" "$TL/tether_spawn.lua 2000 0"
  add "tether run(), relay mode (set_spawn_mode(\"relay\"))" "$TL/tether_spawn.lua 2000 0 relay"
  spawn_rows 2000 0 2000 ">=1.0" ">=1.1"
  run_case 1 "Case 1: spawn+wait /bin/true, N=2000" "spawns/s" higher 120
  # relay mode against C vfork (issue 12: target >= 0.8); rows 1 and 2 are relay and vfork
  local rl=${MEDIANS[1]%% *} vf=${MEDIANS[2]%% *}
  if [ -n "$rl" ] && [ -n "$vf" ] && [[ ${LABELS[2]} == C\ vfork* ]]; then
    local x; x=$(awk -v a="$rl" -v b="$vf" 'BEGIN{printf "%.2f", a/b}')
    echo "Relay mode / C vfork: $x ($(awk -v x="$x" 'BEGIN{print (x >= 0.8) ? ">= 0.8: met" : ">= 0.8: **MISSED**"}'))."
  fi
}

case2() {
  reset_rows
  add "**tether** run() with a 1 GiB Lua heap" "$TL/tether_spawn.lua 300 1024"
  add "tether run(), small heap (N=300)" "$TL/tether_spawn.lua 300 0" ">=0.8"
  spawn_rows 300 1024 100
  run_case 2 "Case 2: spawn+wait /bin/true with a 1 GiB resident heap, N=300 (fork-based peers N=100)" "spawns/s" higher 180
  local l
  l=$(grep -h '^tether-heap Rss' "$B"/err.2.0.* 2>/dev/null | awk '{print $3}' | med)
  [ -n "$l" ] && echo && echo "tether's heap: Rss $(awk -v k="$l" 'BEGIN{printf "%.0f MiB", k/1024}') (a table of 16384 distinct 64 KiB strings)."
}

case3() {
  reset_rows
  local a="268435456 3" tm=""
  [ $HAVE_TIME = 1 ] && tm="/usr/bin/time -f maxrss_kb=%M "
  add "**tether** exec.command(\"head\", ...):output()" "$tm$TL/tether_capture.lua $a"
  peer c_capture && add "C pipe+posix_spawn+read loop" "$tm./c_capture $a" ">=1.0"
  peer c_capture && add "(ceiling) C read into a fixed 64 KiB buffer, discard" "$tm./c_capture $a discard"
  peer go_capture && add "Go exec.Command.Output" "$tm./go_capture $a"
  [ $HAVE_PY = 1 ] && add "Python check_output" "$tm$PY $PEERS/py_capture.py $a stdout"
  [ $HAVE_LUV = 1 ] && add "luv spawn + pipe read_start" "${tm}lua5.4 $PEERS/luv_capture.lua $a"
  add "tether combined_output()" "$tm$TL/tether_capture.lua $a combined"
  add "tether stdout_pipe():read(\"a\") + wait()" "$tm$TL/tether_capture.lua $a pipe"
  run_case 3 "Case 3: output() of 256 MiB (head -c 268435456 /dev/zero), 3 captures/process" "MB/s (1e6 B)" higher 120
  echo
  echo "Peak RSS (target for tether: at most 1.1x the output size above baseline):"
  echo
  local x base hwm
  x=$(grep -h '^tether-rss' "$B"/err.3.0.* | sed 's/.*above_x_output=//' | med)
  base=$(grep -h '^tether-rss' "$B"/err.3.0.* | sed 's/.*base_kb=\([0-9]*\).*/\1/' | med)
  hwm=$(grep -h '^tether-rss' "$B"/err.3.0.* | sed 's/.*hwm_kb=\([0-9]*\).*/\1/' | med)
  [ -n "$x" ] && echo "- tether: VmHWM $((hwm / 1024)) MiB, $((base / 1024)) MiB before the first capture: $x x the output size above baseline ($(awk -v x="$x" 'BEGIN{print (x <= 1.1) ? "<= 1.1: met" : "> 1.1: **MISSED**"}'))."
  if [ $HAVE_TIME = 1 ]; then
    local i
    for i in "${!LABELS[@]}"; do
      x=$(grep -h '^maxrss_kb=' "$B"/err.3.$i.* 2>/dev/null | sed 's/maxrss_kb=//' | med)
      [ -n "$x" ] && echo "- ${LABELS[i]//\*/}: max RSS $((x / 1024)) MiB ($(awk -v k="$x" 'BEGIN{printf "%.2f", k*1024/268435456}') x output; GNU time)"
    done
  fi
}

case4() {
  reset_rows
  add "**tether** cmd.stderr = {}; cmd:output()" "$TL/tether_capture2.lua 20 output"
  peer c_capture2 && add "C 2 pipes + poll loop" "./c_capture2 20" "<=0.8"
  peer go_capture2 && add "Go Output() with cmd.Stderr=&bytes.Buffer" "./go_capture2 20"
  [ $HAVE_PY = 1 ] && add "Python subprocess.run(capture_output=True)" "$PY $PEERS/py_capture2.py 20"
  [ $HAVE_LUV = 1 ] && add "luv spawn, 2 pipes read_start" "lua5.4 $PEERS/luv_capture2.lua 20"
  add "tether cmd.stdout = {}, cmd.stderr = {}; cmd:run()" "$TL/tether_capture2.lua 20 tables"
  run_case 4 "Case 4: 8 MiB stdout + 8 MiB stderr captured separately, 20 captures/process" "ms per capture (median)" lower 120
}

case5() {
  reset_rows
  add "**tether** signal.notify + exec.find_process(self):signal(\"USR1\") + ch:recv(1)" "$TL/tether_signal.lua 10000"
  peer c_signal_selfpipe && add "C self-pipe handler + poll" "./c_signal_selfpipe 10000" "<=1.25"
  peer c_signalfd && add "C signalfd + poll" "./c_signalfd 10000"
  peer go_signal && add "Go signal.Notify channel" "./go_signal 10000"
  [ $HAVE_PY = 1 ] && add "Python set_wakeup_fd + select" "$PY $PEERS/py_signal.py 10000 wakeupfd"
  [ $HAVE_LUV = 1 ] && add "luv uv.new_signal" "lua5.4 $PEERS/luv_signal.lua 10000"
  add "tether, find_process(self) inside the loop too" "$TL/tether_signal.lua 10000 find"
  run_case 5 "Case 5: SIGUSR1 to self until it is received, N=10000 round trips" "us per round trip (median)" lower 60
}

# 10000 files of 4 KiB, page-cached (the peers' mkfiles.py; a shell loop without Python).
BENCH_FILES=${BENCH_FILES:-/tmp/tether-bench-files}
make_files() {
  if [ $HAVE_PY = 1 ]; then $PY "$PEERS/mkfiles.py" "$BENCH_FILES" 10000 4096 >>"$LOG" 2>&1; return; fi
  mkdir -p "$BENCH_FILES"
  local i p
  for ((i = 0; i < 10000; i++)); do
    p=$(printf '%s/f%05d' "$BENCH_FILES" $i)
    [ "$(stat -c %s "$p" 2>/dev/null)" = 4096 ] || head -c 4096 /dev/urandom >"$p"
  done
  cat "$BENCH_FILES"/f* >/dev/null
}

case6() {
  reset_rows
  make_files || { note "could not make $BENCH_FILES: case 6 skipped"; return; }
  local a="$BENCH_FILES 10000"
  add "**tether** fs.read_files(paths, {limit = 4})" "$TL/tether_readfiles.lua $a 4 3"
  add "Lua sequential io.open/read (same interpreter)" "$TL/tether_readfiles.lua $a 4 3 seq" ">=1.2"
  peer go_readfiles && add "Go os.ReadFile, goroutines, semaphore n=4" "./go_readfiles $a 4 3" ">=1.0"
  peer c_readfiles && add "C sequential open/fstat/read/close" "./c_readfiles $a 1 3"
  peer c_readfiles && add "(ceiling) C 4 pthreads (atomic index)" "./c_readfiles $a 4 3"
  [ $HAVE_LUV = 1 ] && add "luv uv.fs_* async, 16 in flight, 4 pool threads" "lua5.4 $PEERS/luv_readfiles.lua $a 16 3"
  [ $HAVE_PY = 1 ] && add "Python ThreadPoolExecutor(4)" "$PY $PEERS/py_readfiles.py $a 4 3"
  add "tether fs.read_files, limit = 2" "$TL/tether_readfiles.lua $a 2 3"
  run_case 6 "Case 6: read 10000 page-cached 4 KiB files into memory (median of 3 passes per process)" "files/s" higher 120
}

case7() {
  reset_rows
  add "**tether** pool:map(f, list), 4 workers" "$TL/tether_tasks.lua 100000 3 map 1024"
  add "tether pool:submit + future:wait per task, 4 workers" "$TL/tether_tasks.lua 100000 3 submit 1024"
  [ $HAVE_LUV = 1 ] && add "luv uv.new_work, 4 pool threads (Lua 5.4)" "lua5.4 $PEERS/luv_tasks.lua 100000 3" ">=2"
  peer c_tasks && add "C pthreads(4) + mutex/condvar queues" "./c_tasks 100000 4 3"
  peer go_tasks && add "Go 4 worker goroutines + task/result channels" "./go_tasks 100000 pool 4 3"
  [ $HAVE_PY = 1 ] && add "Python ThreadPoolExecutor(4)" "$PY $PEERS/py_tasks.py 100000 4 3"
  run_case 7 "Case 7: 100000 trivial tasks (x*2+1) submitted, all results waited for (median of 3 batches per process)" "tasks/s" higher 120
  echo
  echo "The second tether row (a future per task) is the same work without batching, for comparison; the target is on pool:map."
}

# Case 8 (issue 13): pipes and argv through the public API; peers are io.popen and output().
case8() {
  reset_rows
  add "**tether** stdout_pipe():read(\"a\")" "$TL/tether_pipes.lua reada 268435456 3"
  add "tether cmd:output() (same bytes)" "$TL/tether_pipes.lua output 268435456 3" ">=0.9"
  run_case 8a "Case 8a: read(\"a\") of 256 MiB (head -c 268435456 /dev/zero), 3 reads/process" "MB/s (1e6 B)" higher 120
  reset_rows
  add "**tether** stdout_pipe():lines()" "$TL/tether_pipes.lua lines 1000000 5"
  add "io.popen(\"seq 1000000\"):lines() (same interpreter)" "$TL/tether_pipes.lua popen 1000000 5" ">=1.0"
  run_case 8b "Case 8b: lines() over seq 1000000 (1,000,000 lines, median of 5)" "lines/s" higher 120
  reset_rows
  add "**tether** exec.command(\"/bin/true\", <100000 args>):run()" "$TL/tether_pipes.lua argv 100000 5"
  [ $HAVE_PY = 1 ] && add "Python subprocess.run([\"/bin/true\", <100000 args>])" "$PY $HERE/peer_argv.py 100000 5"
  run_case 8c "Case 8c: a command with 100,000 arguments built and run (median of 5)" "seconds" lower 120
  local t=${MEDIANS[0]%% *}
  [ -n "$t" ] && echo && echo "Target: tether under 0.5 s: $t s ($(awk -v t="$t" 'BEGIN{print (t < 0.5) ? "met" : "**MISSED**"}'))."
}

# Case 9: 1000 concurrent children (sh -c 'sleep 0.3'), all started then all waited, 3 rounds.
# The peers of this case live in bench/peers/ (go_many.go, py_many.py).
case9() {
  local own=$HERE/peers
  if has go && [ ! -x "$B/go_many" ]; then
    (cd "$own" && go build -o "$B/go_many" go_many.go) >>"$LOG" 2>&1 || NOTES+=("go build go_many.go failed")
  fi
  local mode
  for mode in cpu wall; do
    reset_rows
    add "**tether** start() x1000, then wait() each" "$TL/tether_many.lua 1000 3 $mode"
    peer go_many && add "Go goroutine per exec.Command.Run, WaitGroup" "./go_many 1000 3 $mode" "$([ $mode = cpu ] && echo '<=1.2')"
    [ $HAVE_PY = 1 ] && add "Python Popen x1000, then wait() each" "$PY $own/py_many.py 1000 3 $mode"
    if [ $mode = cpu ]; then
      run_case 9 "Case 9: 1000 concurrent children (sh -c 'sleep 0.3'), 3 rounds: the parent's CPU (user + system, /proc/self/stat)" "CPU seconds" lower 180
    else
      run_case 9w "Case 9 (wall): the same, median wall time of a round" "seconds per round" lower 180
    fi
  done
}

# Syscalls per spawn: strace -c over N spawns minus the same program with 0 spawns, / N.
# "parent" traces the spawning process only; "-f" adds the child (its pre-exec work and
# /bin/true itself, the same for every program).
strace_count() {   # $1 = -f or "", rest = command; prints "name calls" lines and "total N"
  local f=$1; shift
  (cd "$B" && strace $f -c -o "$B/strace.out" "$@" >/dev/null 2>>"$LOG")
  awk '$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 { print $NF, $4 }' "$B/strace.out"
}
per_spawn() {   # $1 = -f or "", $2 = N, then the command prefix (N is appended, then heap 0)
  local f=$1 n=$2; shift 2
  strace_count "$f" "$@" 0 0 >"$B/s0"
  strace_count "$f" "$@" "$n" 0 >"$B/s1"
  awk -v n="$n" 'NR == FNR { z[$1] = $2; next } { d = ($2 - z[$1]) / n; if (d > 0.004) printf "%s %.2f\n", $1, d }' "$B/s0" "$B/s1" | sort -k2 -g -r
}
casesys() {
  echo
  echo "#### Syscalls per spawn (strace -c over 1000 spawns of /bin/true, minus 0 spawns, / 1000)"
  echo
  if ! has strace; then note "strace missing: syscall counts skipped (Debian: strace)"; return; fi
  local -a progs=("tether exec.command():run()") cmds=("$LUA_BIN $HERE/tether_spawn.lua")
  peer c_spawn_vfork && progs+=("C vfork+execve+waitpid (the floor)") cmds+=("./c_spawn_vfork")
  peer c_spawn_posix_spawn && progs+=("C posix_spawn+waitpid (glibc)") cmds+=("./c_spawn_posix_spawn")
  local i f
  echo "| program | parent: syscalls/spawn | parent, by syscall | with -f (child too): syscalls/spawn |"
  echo "|---|---:|---|---:|"
  for i in "${!progs[@]}"; do
    per_spawn "" 1000 ${cmds[i]} >"$B/p"
    per_spawn -f 1000 ${cmds[i]} >"$B/pf"
    echo "| ${progs[i]} | $(awk '{s += $2} END {printf "%.1f", s}' "$B/p") | $(awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}' "$B/p") | $(awk '{s += $2} END {printf "%.1f", s}' "$B/pf") |"
    { echo "## strace -f per spawn: ${progs[i]}"; cat "$B/pf"; } >>"$LOG"
  done
}

facts
for c in ${@:-1 2 3 4 5 6 7 8 9 sys nginx}; do
  case $c in
    [1-9]) "case$c" ;;
    sys) casesys ;;
    nginx) bash "$HERE/nginx.sh" ;; # issue 12: tether inside real nginx
    *) echo "unknown case $c" >&2 ;;
  esac
done
echo
echo "_Total wall time: $((SECONDS - T0)) s. Per-run details (stderr, heap Rss): ${LOG}_"
