// Command bench measures the events bus and the IPC alerts across real
// processes, with the method and JSON fields of the peers' figures in
// ../shared/reference/peers.md.
//
//	go run ./bench events [-n N -size BYTES -k COUNT [-gap DURATION]] [-json=false]
//	go run ./bench alerts [-n N -size BYTES -k COUNT [-gap DURATION]] [-json=false]
//	go run ./bench pingpong -n N -size BYTES -k PONGS
//	go run ./bench load -caddy ./caddy [-procs 2] [-mode sse|longpoll] [-s S] [-m M] [-size B] [-rate R | -conns C]
//	go run ./bench fleet [-hosts 2 -workers 2 -rate 1000 -paced 5000 -burst 200000 -size 16 -nats URL]
//	go run ./bench chaos [-writers 3 -readers 2 -zone-size 1MiB -min 16 -max 0 -duration 60s -stops=true -kill=false -waitmax 100ms]
//
// It starts N worker processes on a fresh zone (plain Go processes using the
// packages; no Caddy). Worker 0 posts K events of SIZE bytes (a burst, or
// GAP apart), every worker (the poster included) handles them, and each
// handler takes the latency from a CLOCK_MONOTONIC microsecond timestamp in
// the payload's first 10 bytes. Without -k it runs the standard matrix:
// N = 2 and 5 (and 20 for alerts); bursts of 20,000 × 10 B and 5,000 × 10 KB;
// paced runs of 1,000 events 5 ms apart. "alerts" does the same with
// ipc.Broadcast. "pingpong" is ngx_lua_ipc's own benchmark: worker 0
// broadcasts a ping, every other worker replies with a pong to the sender,
// and each pong is answered with a new ping to its sender, until K pongs.
//
// "fleet" runs hosts (zones) whose worker processes run the fleet bridge
// to one NATS server (embedded unless -nats): the driver posts on host 0,
// paced then in a burst, and follows every other host's ring; it prints the
// host → host latency beside a bare NATS publish → subscribe (the floor),
// the burst's host → host rate, and what was lost or repeated.
//
// "chaos" is not a speed test but the ring's adversarial correctness check
// (package internal/chaos): writer processes write self-verifying records
// of random sizes (-max 0: up to the ring's MaxRecord) as fast as they
// can while the driver SIGSTOPs a random one for 1–100 ms, over and over,
// and with -kill SIGKILLs one now and then and restarts it; reader
// processes verify every byte of every record and account for every
// sequence number. It prints one JSON line, and exits 1 when a reader was
// handed a corrupt record or the accounting did not add up.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ipcbus/caddy-ipcbus/internal/chaos"
)

func main() {
	chaos.MaybeChild()
	if os.Getenv("BENCH_WORKER") == "fleet" {
		os.Exit(fleetWorker())
	}
	if os.Getenv("BENCH_WORKER") != "" {
		os.Exit(worker())
	}
	mode := ""
	if len(os.Args) >= 2 {
		mode = os.Args[1]
	}
	switch mode {
	case "events", "alerts":
	case "pingpong":
		os.Exit(pingpongMain(os.Args[2:]))
	case "load":
		os.Exit(loadMain(os.Args[2:]))
	case "chaos":
		os.Exit(chaosMain(os.Args[2:]))
	case "fleet":
		os.Exit(fleetMain(os.Args[2:]))
	default:
		fmt.Fprintln(os.Stderr, "usage: bench events|alerts [-n N -size BYTES -k COUNT [-gap DURATION]] [-json=false] [-zone-size BYTES] [-spin D]\n       bench pingpong -n N -size BYTES -k PONGS\n       bench load -caddy BINARY [-procs 2] [-mode sse|longpoll] [-s SUBSCRIBERS] [-m MESSAGES] [-size BYTES] [-rate PER_S | -conns N]\n       bench fleet [-hosts 2 -workers 2 -rate 1000 -paced 5000 -burst 200000 -size 16 -nats URL]\n       bench chaos [-writers 3 -readers 2 -zone-size 1MiB -min 16 -max 0 -duration 60s -stops=true -kill=false -waitmax 100ms]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	n := fs.Int("n", 0, "worker processes")
	size := fs.Int("size", 10, "payload bytes (at least 10)")
	k := fs.Int("k", 0, "events to post; 0 runs the standard matrix")
	gap := fs.Duration("gap", 0, "pause between posts (0: a burst)")
	asJSON := fs.Bool("json", true, "print JSON lines (false: a table)")
	zoneSize := fs.Int64("zone-size", 64<<20, "zone size in bytes")
	spin := fs.Duration("spin", 0, "delivery spin window before sleeping (0: the default, 50µs)")
	fs.Parse(os.Args[2:])
	var runs []run
	if *k > 0 {
		if *n == 0 {
			*n = 5
		}
		runs = []run{{N: *n, Size: *size, K: *k, Gap: *gap}}
	} else {
		ns := []int{2, 5}
		if mode == "alerts" {
			ns = append(ns, 20)
		}
		for _, nn := range ns {
			if *n != 0 && nn != *n {
				continue
			}
			runs = append(runs,
				run{N: nn, Size: 10, K: 20000},
				run{N: nn, Size: 10240, K: 5000},
				run{N: nn, Size: 10, K: 1000, Gap: 5 * time.Millisecond},
				run{N: nn, Size: 10240, K: 1000, Gap: 5 * time.Millisecond})
		}
	}
	var lines []line
	for _, r := range runs {
		if r.Size < 10 {
			r.Size = 10
		}
		rep, err := r.do(mode, *zoneSize, *spin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		l := line{Lib: "ipcbus-" + mode, N: r.N, Size: r.Size, K: r.K, Gap: r.Gap.Seconds(), Report: rep}
		if *spin > 0 {
			l.Spin = spin.String()
		}
		lines = append(lines, l)
		if *asJSON {
			b, _ := json.Marshal(l)
			fmt.Println(string(b))
		}
	}
	if !*asJSON {
		printTable(lines)
	}
}

type run struct {
	N, Size, K int
	Gap        time.Duration
}

type line struct {
	Lib    string  `json:"lib"`
	N      int     `json:"N"`
	Size   int     `json:"size"`
	K      int     `json:"k"`
	Gap    float64 `json:"gap"`
	Spin   string  `json:"spin,omitempty"`
	Report report  `json:"report"`
}

type report struct {
	Delivered           int     `json:"delivered"`
	Expected            int     `json:"expected"`
	Lost                int     `json:"lost"`
	PostRate            float64 `json:"post_rate"`
	TotalRate           float64 `json:"total_rate"`
	PerWorkerRate       float64 `json:"per_worker_rate"`
	P50us               float64 `json:"p50_us"`
	P99us               float64 `json:"p99_us"`
	MaxUs               float64 `json:"max_us"`
	RemoteRatePerWorker float64 `json:"remote_rate_per_worker"`
	RemoteP50us         float64 `json:"remote_p50_us"`
	RemoteP99us         float64 `json:"remote_p99_us"`
}

// result is what a worker process prints.
type result struct {
	Poster    bool    `json:"poster"`
	Received  int     `json:"received"`
	Lost      uint64  `json:"lost"`
	FirstPost int64   `json:"first_post_ns"` // CLOCK_MONOTONIC
	LastPost  int64   `json:"last_post_ns"`
	LastRecv  int64   `json:"last_recv_ns"`
	LatUs     []int32 `json:"lat_us"`
	Err       string  `json:"err,omitempty"`
}

func (r run) do(mode string, zoneSize int64, spin time.Duration) (report, error) {
	dir, err := os.MkdirTemp(defaultDir(), "ipcbus-bench-")
	if err != nil {
		return report{}, err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return report{}, err
	}
	type proc struct {
		cmd *exec.Cmd
		in  *os.File
		out *bufio.Reader
	}
	var ps []proc
	defer func() {
		for _, p := range ps {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	}()
	for i := 0; i < r.N; i++ {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "BENCH_WORKER="+mode, "BENCH_DIR="+dir, fmt.Sprintf("BENCH_ZONE_SIZE=%d", zoneSize),
			fmt.Sprintf("BENCH_POSTER=%v", i == 0), fmt.Sprintf("BENCH_K=%d", r.K), fmt.Sprintf("BENCH_SIZE=%d", r.Size), fmt.Sprintf("BENCH_GAP=%d", r.Gap), fmt.Sprintf("BENCH_SPIN=%d", spin))
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		rp, wp, _ := os.Pipe()
		cmd.Stdin = rp
		if err := cmd.Start(); err != nil {
			return report{}, err
		}
		rp.Close()
		p := proc{cmd: cmd, in: wp, out: bufio.NewReaderSize(out, 1<<20)}
		ps = append(ps, p)
		if l, err := p.out.ReadString('\n'); err != nil || strings.TrimSpace(l) != "ready" {
			return report{}, fmt.Errorf("worker %d: %q %v", i, l, err)
		}
	}
	for _, p := range ps {
		p.in.WriteString("go\n")
	}
	var res []result
	for i, p := range ps {
		l, err := p.out.ReadString('\n')
		if err != nil {
			return report{}, fmt.Errorf("worker %d: %v", i, err)
		}
		var x result
		if err := json.Unmarshal([]byte(l), &x); err != nil {
			return report{}, err
		}
		if x.Err != "" {
			return report{}, fmt.Errorf("worker %d: %s", i, x.Err)
		}
		res = append(res, x)
	}
	return summarize(r, res), nil
}

func summarize(r run, res []result) report {
	rep := report{Expected: r.N * r.K}
	first, last := res[0].FirstPost, int64(0)
	var all, remote []int32
	var perWorker, perRemote float64
	for _, x := range res {
		rep.Delivered += x.Received
		last = max(last, x.LastRecv)
		all = append(all, x.LatUs...)
		rate := float64(x.Received) / (float64(x.LastRecv-first) / 1e9)
		perWorker += rate
		if !x.Poster {
			remote = append(remote, x.LatUs...)
			perRemote += rate
		}
	}
	rep.Lost = rep.Expected - rep.Delivered
	rep.PostRate = float64(r.K) / (float64(res[0].LastPost-first) / 1e9)
	rep.TotalRate = float64(rep.Delivered) / (float64(last-first) / 1e9)
	rep.PerWorkerRate = perWorker / float64(len(res))
	if len(res) > 1 {
		rep.RemoteRatePerWorker = perRemote / float64(len(res)-1)
	}
	rep.P50us, rep.P99us, rep.MaxUs = pct(all, 50), pct(all, 99), pct(all, 100)
	rep.RemoteP50us, rep.RemoteP99us = pct(remote, 50), pct(remote, 99)
	return rep
}

func pct(v []int32, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	i := int(float64(len(v)-1) * p / 100)
	return float64(v[i])
}

func printTable(lines []line) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tsize B\tK\tgap\tposts/s\tdelivered/s total\tper worker\tper non-poster\tp50 µs\tp99 µs\tnon-poster p50\tnon-poster p99\tlost\t")
	for _, l := range lines {
		r := l.Report
		fmt.Fprintf(tw, "%d\t%d\t%d\t%v\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t\n", l.N, l.Size, l.K, time.Duration(l.Gap*1e9),
			r.PostRate, r.TotalRate, r.PerWorkerRate, r.RemoteRatePerWorker, r.P50us, r.P99us, r.RemoteP50us, r.RemoteP99us, r.Lost)
	}
	tw.Flush()
}

func defaultDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}
