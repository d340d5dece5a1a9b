# Case 8 (Python): N concurrent children, subprocess's way: N Popen(["sh", "-c", "sleep 0.3"]),
# then wait() on each, ROUNDS times.
# args: N ROUNDS MODE. MODE "cpu" prints the process's CPU seconds (user + system, from
# /proc/self/stat, as the other programs of the case) over all rounds; "wall" prints the
# median wall seconds of a round.
import statistics
import subprocess
import sys
import time


def cpu_seconds():
    with open("/proc/self/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / 100


n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
mode = sys.argv[3] if len(sys.argv) > 3 else "cpu"
cpu0, walls = cpu_seconds(), []
for _ in range(rounds):
    t0 = time.monotonic()
    procs = [subprocess.Popen(["sh", "-c", "sleep 0.3"]) for _ in range(n)]
    for p in procs:
        if p.wait() != 0:
            sys.exit("child failed")
    walls.append(time.monotonic() - t0)
cpu = cpu_seconds() - cpu0
print(f"py-many cpu_s={cpu:.2f} wall_median_s={statistics.median(walls):.3f}", file=sys.stderr)
print(f"{statistics.median(walls) if mode == 'wall' else cpu:.3f}")
