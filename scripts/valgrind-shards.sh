#!/bin/sh
# scripts/valgrind-shards.sh JOBS DIR LUA_BIN VALGRIND... -- the spec files split into JOBS
# shards (largest files first, each to the lightest shard so far), each shard's busted run
# under valgrind in parallel, logs in DIR/<n>/. Prints every shard's TAP, valgrind's
# findings and summary, then one closing "N passed, N failed" for them all; exits non-zero
# when a shard failed (a spec, a valgrind error: --error-exitcode, or a definite leak).
set -u
jobs=$1; dir=$2; lua=$3; shift 3
specs=${VG_SPECS:-spec}
files=$(find $specs -name '*_spec.lua' -type f -exec wc -c {} + | grep -v ' total$' | sort -rn | awk '{print $2}')
i=0
while [ $i -lt "$jobs" ]; do mkdir -p "$dir/$i"; : > "$dir/$i/files"; eval "w$i=0"; i=$((i + 1)); done
for f in $files; do
  best=0; i=1
  while [ $i -lt "$jobs" ]; do
    eval "a=\$w$i; b=\$w$best"; [ "$a" -lt "$b" ] && best=$i; i=$((i + 1))
  done
  echo "$f" >> "$dir/$best/files"
  eval "w$best=\$((w$best + $(wc -c < "$f")))"
done
i=0
while [ $i -lt "$jobs" ]; do
  d=$dir/$i
  if [ -s "$d/files" ]; then
    ( "$@" --log-file="$d/valgrind.log" "$lua" /usr/bin/busted --helper=spec/helpers/valgrind.lua \
        -o TAP $(cat "$d/files") > "$d/test.tap" 2> "$d/test.err"; echo $? > "$d/rc" ) &
  fi
  i=$((i + 1))
done
wait
rc=0; passed=0; failed=0; i=0
while [ $i -lt "$jobs" ]; do
  d=$dir/$i
  if [ -s "$d/files" ]; then
    echo "== valgrind shard $i: $(tr '\n' ' ' < "$d/files")"
    cat "$d/test.tap"; cat "$d/test.err" >&2
    grep -v '^--[0-9]*-- ' "$d/valgrind.log"
    line=$("$lua" scripts/tap-summary.lua "$d/test.tap" "$(cat "$d/rc")" | tail -n 1) || rc=1
    echo "shard $i: $line (valgrind/busted status $(cat "$d/rc"))"
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    case "$p$f" in *[!0-9]*|'') rc=1; failed=$((failed + 1)) ;; *) passed=$((passed + p)); failed=$((failed + f)) ;; esac
  fi
  i=$((i + 1))
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] || rc=1
exit $rc
