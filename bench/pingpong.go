package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

type pingpongLine struct {
	Lib        string  `json:"lib"`
	N          int     `json:"N"`
	Size       int     `json:"size"`
	Pongs      int     `json:"pongs"`
	PongsPerS  float64 `json:"pongs_per_s"`
	AlertsPerS float64 `json:"alerts_per_s"`
	Seconds    float64 `json:"seconds"`
}

// pingpongMain runs ngx_lua_ipc's benchmark with N worker processes.
func pingpongMain(args []string) int {
	fs := flag.NewFlagSet("pingpong", flag.ExitOnError)
	n := fs.Int("n", 5, "worker processes")
	size := fs.Int("size", 10, "payload bytes")
	k := fs.Int("k", 1000000, "pongs to wait for")
	spin := fs.Duration("spin", 0, "delivery spin window (0: the default)")
	fs.Parse(args)
	dir, err := os.MkdirTemp(defaultDir(), "ipcbus-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	self, _ := os.Executable()
	var cmds []*exec.Cmd
	defer func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	}()
	var pinger *bufio.Reader
	var pingerIn *os.File
	for i := 0; i < *n; i++ {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "BENCH_WORKER=pingpong", "BENCH_DIR="+dir, fmt.Sprintf("BENCH_POSTER=%v", i == 0),
			fmt.Sprintf("BENCH_K=%d", *k), fmt.Sprintf("BENCH_SIZE=%d", *size), fmt.Sprintf("BENCH_SPIN=%d", *spin))
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		rp, wp, _ := os.Pipe()
		cmd.Stdin = rp
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		rp.Close()
		cmds = append(cmds, cmd)
		r := bufio.NewReader(out)
		if l, err := r.ReadString('\n'); err != nil || strings.TrimSpace(l) != "ready" {
			fmt.Fprintln(os.Stderr, "worker:", l, err)
			return 1
		}
		if i == 0 {
			pinger, pingerIn = r, wp
		}
	}
	pingerIn.WriteString("go\n")
	l, err := pinger.ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var secs float64
	fmt.Sscan(l, &secs)
	b, _ := json.Marshal(pingpongLine{Lib: "ipcbus-pingpong", N: *n, Size: *size, Pongs: *k, PongsPerS: float64(*k) / secs, AlertsPerS: 2 * float64(*k) / secs, Seconds: secs})
	fmt.Println(string(b))
	return 0
}

// pingpongWorker is one process of the ping-pong: worker 0 pings, the
// others pong.
func pingpongWorker(z *zone.Zone) int {
	w, err := workermgr.Join(z, workermgr.Config{Generation: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer w.Leave(workermgr.ReasonShutdown)
	c, err := ipc.New(ipc.Options{Zone: z, PID: os.Getpid(), Generation: 1, Spin: time.Duration(envInt("BENCH_SPIN"))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c.SetWorkerSlot(w.Slot())
	k := envInt("BENCH_K")
	payload := make([]byte, envInt("BENCH_SIZE"))
	var pongs atomic.Int64
	done := make(chan struct{})
	c.Receive("benchmark_ping", func(a *ipc.Alert) { a.Reply("benchmark_pong", payload) })
	c.Receive("benchmark_pong", func(a *ipc.Alert) {
		n := pongs.Add(1)
		if n == k {
			close(done)
		}
		if n < k {
			a.Reply("benchmark_ping", payload)
		}
	})
	c.Start()
	defer c.Close()
	fmt.Println("ready")
	if os.Getenv("BENCH_POSTER") != "true" {
		time.Sleep(time.Hour)
		return 0
	}
	bufio.NewReader(os.Stdin).ReadString('\n')
	// Let the other workers' receivers start before the first broadcast.
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	c.Broadcast("benchmark_ping", payload)
	<-done
	fmt.Println(time.Since(start).Seconds())
	return 0
}
