#!/bin/sh
# spec/helpers/initchild.sh MODE ARGS... : the main child that spec/init_spec.lua runs
# under an init (tether-init or tini). Plain sh; reads /proc only (in a PID namespace
# mounted with --mount-proc, /proc shows the namespace's processes only).
#
# Modes:
#   exit N            exit N, after checking that the parent is PID 1 (else exit 99
#                     and say so on stderr)
#   orphans N FILE    make N orphans (each a `sleep 60` whose parent exits at once), so
#                     they are re-parented to the init ($PPID); write "adopted K" to FILE
#                     (K: living sleeps whose parent is $PPID), kill them (SIGTERM), wait
#                     until none lives, then
#                     until no zombie is left (at most 20 s), write "zombies Z" (every
#                     zombie in the namespace as PID 1's child; else the init's zombie
#                     children); exit 0
#   record FILE       trap TERM HUP USR1 USR2 INT QUIT WINCH ALRM CONT, appending each
#                     name to FILE as it arrives; write "ready" to FILE.ready; exit 0 once
#                     all nine came
#   group FILE        trap TERM (append "TERM" to FILE, and "alive" when the grandchild
#                     still lives then); start a grandchild `sleep 1000` that does not
#                     trap; write "ready" to FILE.ready; wait for the grandchild, append
#                     "gone" to FILE, exit 7
#   stat              print this shell's /proc/self/stat line
set -u
mode=$1
shift

# state_of PID -> the one-letter state of PID, or nothing when it is gone
state_of() {
  { read -r l < "/proc/$1/stat"; } 2>/dev/null || return 0
  s=${l##*") "}
  echo "${s%% *}"
}

# count_zombies -> number of processes in state Z: every one in the PID namespace when
# the init is PID 1, else the init's children only (the rest of the system is not ours)
count_zombies() {
  n=0
  for f in /proc/[0-9]*/stat; do
    { read -r l < "$f"; } 2>/dev/null || continue
    s=${l##*") "}
    set -- $s
    [ "$PPID_OF_INIT" = 1 ] || [ "$2" = "$PPID_OF_INIT" ] || continue
    [ "$1" = Z ] && n=$((n + 1))
  done
  echo $n
}

# adopted_sleeps PPID -> number of living `sleep` processes whose parent is PPID
adopted_sleeps() {
  n=0
  for f in /proc/[0-9]*/stat; do
    { read -r l < "$f"; } 2>/dev/null || continue
    case $l in *" (sleep) "*) ;; *) continue ;; esac
    s=${l##*") "}
    set -- $s
    [ "$1" != Z ] && [ "$2" = "$PPID_OF_INIT" ] && n=$((n + 1))
  done
  echo $n
}

case $mode in
exit)
  if [ "$PPID" != 1 ]; then echo "initchild: parent is $PPID, not PID 1" >&2; exit 99; fi
  exit "$1"
  ;;
orphans)
  count=$1 file=$2
  PPID_OF_INIT=$PPID
  pids=""
  i=0
  while [ $i -lt "$count" ]; do
    pids="$pids $(sh -c 'sleep 60 </dev/null >/dev/null 2>&1 & echo $!')"
    i=$((i + 1))
  done
  echo "adopted $(adopted_sleeps)" >> "$file"
  kill $pids
  tries=0
  for p in $pids; do
    while :; do
      st=$(state_of "$p")
      [ -z "$st" ] || [ "$st" = Z ] && break
      sleep 0.05
    done
  done
  while [ "$(count_zombies)" != 0 ] && [ $tries -lt 200 ]; do sleep 0.1; tries=$((tries + 1)); done
  echo "zombies $(count_zombies)" >> "$file"
  exit 0
  ;;
record)
  file=$1
  set -- TERM HUP USR1 USR2 INT QUIT WINCH ALRM CONT
  for s in "$@"; do trap "echo $s >> '$file'" $s; done
  echo ready > "$file.ready"
  while :; do
    n=$(grep -c . "$file" 2>/dev/null)
    [ "${n:-0}" -ge $# ] && break
    sleep 0.05
  done
  exit 0
  ;;
group)
  file=$1
  sleep 1000 </dev/null >/dev/null 2>&1 &
  gp=$!
  trap 'echo TERM >> "$file"; [ "$(state_of $gp)" != "" ] && [ "$(state_of $gp)" != Z ] && echo alive >> "$file"' TERM
  echo ready > "$file.ready"
  while [ -n "$(state_of $gp)" ] && [ "$(state_of $gp)" != Z ]; do wait $gp; done
  echo gone >> "$file"
  exit 7
  ;;
stat)
  cat /proc/$$/stat
  ;;
*)
  echo "initchild: unknown mode $mode" >&2
  exit 2
  ;;
esac
