package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"time"
	_ "unsafe" // go:linkname

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// monoNs is CLOCK_MONOTONIC in ns, comparable across processes: the
// runtime reads it through the vDSO (unix.ClockGettime is a real syscall).
//
//go:linkname monoNs runtime.nanotime
func monoNs() int64

// stamp writes the microsecond monotonic time, mod 1e10, as 10 zero-padded digits.
func stamp(p []byte, us int64) {
	us %= 1e10
	for i := 9; i >= 0; i-- {
		p[i] = byte('0' + us%10)
		us /= 10
	}
}

func unstamp(p []byte) int64 {
	var v int64
	for _, c := range p[:10] {
		v = v*10 + int64(c-'0')
	}
	return v
}

func envInt(k string) int64 {
	v, _ := strconv.ParseInt(os.Getenv(k), 10, 64)
	return v
}

// worker is one bench process: a bus on the zone in BENCH_DIR; the poster
// posts BENCH_K events after "go"; every worker reports its receipts.
func worker() int {
	if prof := os.Getenv("BENCH_CPUPROFILE"); prof != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", prof, os.Getpid()))
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	size := envInt("BENCH_ZONE_SIZE")
	z, err := zone.Open(zone.Options{Name: "bench", Dir: os.Getenv("BENCH_DIR"), Size: size})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer z.Close()
	if os.Getenv("BENCH_WORKER") == "pingpong" {
		return pingpongWorker(z)
	}
	k, psize, gap := int(envInt("BENCH_K")), int(envInt("BENCH_SIZE")), time.Duration(envInt("BENCH_GAP"))
	poster := os.Getenv("BENCH_POSTER") == "true"
	spin := time.Duration(envInt("BENCH_SPIN"))
	res := result{Poster: poster, LatUs: make([]int32, 0, k)}
	var received atomic.Int64
	var lastRecv atomic.Int64
	done := make(chan struct{})
	got := func(data []byte) {
		now := monoNs()
		if len(data) < 10 {
			return
		}
		res.LatUs = append(res.LatUs, int32((now/1000)%1e10-unstamp(data)))
		lastRecv.Store(now)
		if received.Add(1) == int64(k) {
			close(done)
		}
	}
	var post func(p []byte) error
	var barrier, closeAll func()
	if os.Getenv("BENCH_WORKER") == "alerts" {
		w, err := workermgr.Join(z, workermgr.Config{Generation: 1})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		c, err := ipc.New(ipc.Options{Zone: z, PID: os.Getpid(), Generation: 1, Spin: spin})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		c.SetWorkerSlot(w.Slot())
		c.Receive("pb", func(a *ipc.Alert) { got(a.Data) })
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		post = func(p []byte) error { return c.Broadcast("pb", p) }
		barrier = func() {
			for prev := int64(-1); received.Load() != prev; {
				prev = received.Load()
				time.Sleep(10 * time.Millisecond)
			}
			res.Lost = c.Stats().Lost
		}
		closeAll = func() { c.Close(); w.Leave(workermgr.ReasonShutdown) }
		fmt.Println("ready")
		return drive(&res, poster, k, psize, gap, post, barrier, closeAll, done, &received, &lastRecv)
	}
	b, err := events.New(events.Options{Zone: z, PID: os.Getpid(), Generation: 1, InlineLimit: 64 << 10, Spin: spin})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b.Register(func(e *events.Event) {
		if e.Name == events.EventLost {
			res.Lost += e.Value.(events.Loss).Count
			return
		}
		if e.Source == "pb" {
			got(e.Data)
		}
	}, "")
	if err := b.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b.Poll()
	fmt.Println("ready")
	post = func(p []byte) error { _, err := b.Post("pb", "e", p); return err }
	barrier = func() { b.Poll() }
	closeAll = func() { b.Close(time.Second) }
	return drive(&res, poster, k, psize, gap, post, barrier, closeAll, done, &received, &lastRecv)
}

// drive waits for "go", posts K payloads if this is the poster, waits for
// the receipts, and prints the result.
func drive(res *result, poster bool, k, psize int, gap time.Duration, post func([]byte) error, barrier, closeAll func(), done chan struct{}, received, lastRecv *atomic.Int64) int {
	bufio.NewReader(os.Stdin).ReadString('\n')
	if poster {
		p := make([]byte, psize)
		for i := 10; i < len(p); i++ {
			p[i] = 'x'
		}
		res.FirstPost = monoNs()
		for i := 0; i < k; i++ {
			stamp(p, monoNs()/1000)
			if err := post(p); err != nil {
				res.Err = err.Error()
				break
			}
			if gap > 0 {
				time.Sleep(gap)
			}
		}
		res.LastPost = monoNs()
	}
	// Wait for all K, or until receipts stop for 3 s.
	for last := int64(-1); ; {
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			if n := received.Load(); n != last {
				last = n
				continue
			}
		}
		break
	}
	barrier()
	res.Received = int(received.Load())
	res.LastRecv = lastRecv.Load()
	closeAll()
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	json.NewEncoder(out).Encode(res)
	out.Flush()
	return 0
}
