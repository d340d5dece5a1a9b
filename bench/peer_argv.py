# Case 8c reference: subprocess.run(["/bin/true", <N arguments>]) N_RUNS times; prints the
# median seconds (argument strings made before the clock starts, as tether_pipes.lua argv).
import subprocess, sys, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
args = ["x%d" % j for j in range(1, n + 1)]
times = []
for _ in range(runs):
    t0 = time.monotonic()
    subprocess.run(["/bin/true"] + args, check=True)
    times.append(time.monotonic() - t0)
times.sort()
print("%.3f" % times[len(times) // 2])
