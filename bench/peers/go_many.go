// Case 8 (Go): N concurrent children, Go's way: one goroutine per exec.Command(...).Run(),
// N at once, then all waited (sync.WaitGroup), ROUNDS times.
// args: N ROUNDS MODE. MODE "cpu" prints the process's CPU seconds (user + system, from
// /proc/self/stat, as the other programs of the case) over all rounds; "wall" prints the
// median wall seconds of a round.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

func cpuSeconds() float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		panic(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

func main() {
	n, rounds, mode := 1000, 3, "cpu"
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		rounds, _ = strconv.Atoi(os.Args[2])
	}
	if len(os.Args) > 3 {
		mode = os.Args[3]
	}
	cpu0 := cpuSeconds()
	walls := make([]float64, 0, rounds)
	for r := 0; r < rounds; r++ {
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := exec.Command("sh", "-c", "sleep 0.3").Run(); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			panic(err)
		}
		walls = append(walls, time.Since(t0).Seconds())
	}
	cpu := cpuSeconds() - cpu0
	sort.Float64s(walls)
	wall := walls[len(walls)/2]
	fmt.Fprintf(os.Stderr, "go-many cpu_s=%.2f wall_median_s=%.3f\n", cpu, wall)
	if mode == "wall" {
		fmt.Printf("%.3f\n", wall)
	} else {
		fmt.Printf("%.3f\n", cpu)
	}
}
