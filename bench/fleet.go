package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/fleet"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// fleetOpts configure a fleet run: hosts zones, each with workers
// processes running the fleet bridge, on one NATS server.
type fleetOpts struct {
	Hosts    int
	Workers  int
	NATS     string // "" embeds a server in this process
	Rate     int    // paced phase: events per second
	Paced    int    // paced phase: events
	Burst    int    // burst phase: events (0 skips it)
	ZoneSize int64
	Payload  int
}

// fleetReport is one fleet run's result (a JSON line).
type fleetReport struct {
	Hosts   int `json:"hosts"`
	Workers int `json:"workers_per_host"`
	// Paced: host 0 → every other host at Rate events/s.
	Rate      int     `json:"rate"`
	PacedK    int     `json:"paced_events"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	FloorP50  float64 `json:"floor_p50_us"`
	FloorP99  float64 `json:"floor_p99_us"`
	BurstK    int     `json:"burst_events"`
	PostRate  float64 `json:"burst_posts_per_s"`
	BurstRate float64 `json:"burst_host_to_host_per_s"`
	// JSFloorRate is the same burst through bare JetStream on the same
	// server: async publishes to a stream, read back by an ordered consumer.
	JSFloorRate float64 `json:"js_floor_per_s"`
	// Lost counts events some host did not get (paced and burst together).
	Lost uint64 `json:"lost"`
	// Duplicated counts events some host got more than once.
	Duplicated uint64 `json:"duplicated"`
}

func fleetMain(args []string) int {
	fs := flag.NewFlagSet("fleet", flag.ExitOnError)
	var o fleetOpts
	fs.IntVar(&o.Hosts, "hosts", 2, "hosts (zones)")
	fs.IntVar(&o.Workers, "workers", 2, "worker processes per host")
	fs.StringVar(&o.NATS, "nats", "", "NATS server URL (default: one embedded in this process, JetStream on a temp dir)")
	fs.IntVar(&o.Rate, "rate", 1000, "paced phase: events per second")
	fs.IntVar(&o.Paced, "paced", 5000, "paced phase: events")
	fs.IntVar(&o.Burst, "burst", 200000, "burst phase: events posted as fast as batches go (0: none)")
	fs.Int64Var(&o.ZoneSize, "zone-size", 256<<20, "zone size in bytes")
	fs.IntVar(&o.Payload, "size", 16, "payload bytes (at least 10)")
	asJSON := fs.Bool("json", true, "print a JSON line (false: a table)")
	fs.Parse(args)
	rep, err := runFleet(o, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench fleet:", err)
		return 1
	}
	if *asJSON {
		b, _ := json.Marshal(rep)
		fmt.Println(string(b))
	} else {
		fmt.Printf("hosts %d × %d workers; paced %d events at %d/s: host→host p50 %.0f µs p99 %.0f µs (bare NATS pub→sub: p50 %.0f µs p99 %.0f µs)\n",
			rep.Hosts, rep.Workers, rep.PacedK, rep.Rate, rep.P50us, rep.P99us, rep.FloorP50, rep.FloorP99)
		fmt.Printf("burst %d events: posted %.0f/s, host→host %.0f/s (bare JetStream publish → ordered consumer: %.0f/s); lost %d, duplicated %d\n", rep.BurstK, rep.PostRate, rep.BurstRate, rep.JSFloorRate, rep.Lost, rep.Duplicated)
	}
	if rep.Lost > 0 || rep.Duplicated > 0 {
		return 1
	}
	return 0
}

// fleetWorker is one host's worker process: a bus and the fleet part on
// the zone in BENCH_DIR, until its stdin closes.
func fleetWorker() int {
	if prof := os.Getenv("BENCH_CPUPROFILE"); prof != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", prof, os.Getpid()))
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	z, err := zone.Open(zone.Options{Name: "bench", Dir: os.Getenv("BENCH_DIR"), Size: envInt("BENCH_ZONE_SIZE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer z.Close()
	b, err := events.New(events.Options{Zone: z, PID: os.Getpid(), Generation: 1})
	if err == nil {
		err = b.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer b.Close(time.Second)
	f, err := fleet.New(fleet.Config{Name: "bench", URLs: []string{os.Getenv("BENCH_NATS")}, Node: os.Getenv("BENCH_NODE")}, z, b)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	f.Start()
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n') // until the driver closes it
	f.Close(true)
	return 0
}

// hostWatch follows one host's zone and keeps what arrived from host 0.
type hostWatch struct {
	mu    sync.Mutex
	lat   []int32 // µs, paced phase
	seen  map[uint64]int
	count atomic.Int64
	last  atomic.Int64 // monoNs of the last arrival
}

func runFleet(o fleetOpts, logw *os.File) (fleetReport, error) {
	rep := fleetReport{Hosts: o.Hosts, Workers: o.Workers, Rate: o.Rate, PacedK: o.Paced, BurstK: o.Burst}
	if o.Hosts < 2 || o.Workers < 1 || o.Payload < 10 || o.Rate < 1 {
		return rep, fmt.Errorf("want at least 2 hosts, 1 worker, a 10-byte payload and a rate")
	}
	url := o.NATS
	if url == "" {
		dir, err := os.MkdirTemp("", "ipcbus-bench-nats-")
		if err != nil {
			return rep, err
		}
		defer os.RemoveAll(dir)
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
		if err != nil {
			return rep, err
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			return rep, fmt.Errorf("embedded NATS server not ready")
		}
		defer s.Shutdown()
		url = s.ClientURL()
	}
	self, err := os.Executable()
	if err != nil {
		return rep, err
	}
	zones := make([]*zone.Zone, o.Hosts)
	var procs []*exec.Cmd
	var stdins []*os.File
	defer func() {
		for _, in := range stdins {
			in.Close()
		}
		for _, c := range procs {
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				c.Process.Kill()
				<-done
			}
		}
		for _, z := range zones {
			if z != nil {
				z.Close()
			}
		}
	}()
	for h := range o.Hosts {
		dir, err := os.MkdirTemp(defaultDir(), "ipcbus-bench-fleet-")
		if err != nil {
			return rep, err
		}
		defer os.RemoveAll(dir)
		if zones[h], err = zone.Open(zone.Options{Name: "bench", Dir: dir, Size: o.ZoneSize}); err != nil {
			return rep, err
		}
		for range o.Workers {
			cmd := exec.Command(self)
			cmd.Env = append(os.Environ(), "BENCH_WORKER=fleet", "BENCH_DIR="+dir, fmt.Sprintf("BENCH_ZONE_SIZE=%d", o.ZoneSize),
				fmt.Sprintf("BENCH_NODE=h%d", h), "BENCH_NATS="+url)
			cmd.Stderr = logw
			out, _ := cmd.StdoutPipe()
			rp, wp, _ := os.Pipe()
			cmd.Stdin = rp
			if err := cmd.Start(); err != nil {
				return rep, err
			}
			rp.Close()
			procs, stdins = append(procs, cmd), append(stdins, wp)
			if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(l) != "ready" {
				return rep, fmt.Errorf("host %d worker: %q %v", h, l, err)
			}
		}
	}
	for h, z := range zones {
		deadline := time.Now().Add(30 * time.Second)
		for z.Fleet().Owner.Load() == 0 || z.Fleet().StreamEpoch.Load() == 0 {
			if time.Now().After(deadline) {
				return rep, fmt.Errorf("host %d: no bridge after 30s", h)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The driver posts on host 0 as a process of its own, and follows every
	// other host's ring.
	bus, err := events.New(events.Options{Zone: zones[0], PID: os.Getpid(), Generation: 1})
	if err != nil {
		return rep, err
	}
	defer bus.Close(time.Second)
	watches := make([]*hostWatch, o.Hosts)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pacedPhase := atomic.Bool{}
	pacedPhase.Store(true)
	for h := 1; h < o.Hosts; h++ {
		w := &hostWatch{seen: map[uint64]int{}}
		watches[h] = w
		fl := events.NewFollower(zones[h], zones[h].Ring().Tail())
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ev, _, ok := fl.Next(50 * time.Millisecond)
				if !ok || ev.Source != "bench" || len(ev.Data) < 10 {
					continue
				}
				now := monoNs()
				id := ev.StreamSeq
				w.mu.Lock()
				w.seen[id]++
				if pacedPhase.Load() {
					w.lat = append(w.lat, int32((now/1000)%1e10-unstamp(ev.Data)))
				}
				w.mu.Unlock()
				w.count.Add(1)
				w.last.Store(now)
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	payload := make([]byte, o.Payload)
	wait := func(n int64, within time.Duration) {
		deadline := time.Now().Add(within)
		for h := 1; h < o.Hosts; h++ {
			for watches[h].count.Load() < n && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	// Paced phase.
	gap := time.Second / time.Duration(o.Rate)
	next := time.Now()
	for range o.Paced {
		time.Sleep(time.Until(next))
		next = next.Add(gap)
		stamp(payload, monoNs()/1000)
		if _, err := bus.Post("bench", "paced", payload); err != nil {
			return rep, err
		}
	}
	wait(int64(o.Paced), 30*time.Second)
	var all []int32
	for h := 1; h < o.Hosts; h++ {
		all = append(all, watches[h].lat...)
	}
	rep.P50us, rep.P99us = pct(all, 50), pct(all, 99)
	pacedPhase.Store(false)
	if rep.FloorP50, rep.FloorP99, err = natsFloor(url, o.Rate, o.Paced, o.Payload); err != nil {
		return rep, err
	}
	// Burst phase: batches of 1,000 as fast as the ring takes them.
	if o.Burst > 0 {
		items := make([]events.BatchItem, 0, 1000)
		start := monoNs()
		for posted := 0; posted < o.Burst; {
			items = items[:0]
			for len(items) < cap(items) && posted+len(items) < o.Burst {
				items = append(items, events.BatchItem{Source: "bench", Event: "burst", Data: payload})
			}
			stamp(payload, monoNs()/1000)
			if _, _, err := bus.PostBatch(items); err != nil {
				return rep, err
			}
			posted += len(items)
		}
		postEnd := monoNs()
		rep.PostRate = float64(o.Burst) / (float64(postEnd-start) / 1e9)
		wait(int64(o.Paced+o.Burst), 120*time.Second)
		var slowest int64
		for h := 1; h < o.Hosts; h++ {
			slowest = max(slowest, watches[h].last.Load())
		}
		rep.BurstRate = float64(o.Burst) / (float64(slowest-start) / 1e9)
		if rep.JSFloorRate, err = jsFloor(url, o.Burst, o.Payload); err != nil {
			return rep, err
		}
	}
	time.Sleep(200 * time.Millisecond) // a repeat would show by now
	want := o.Paced + o.Burst
	for h := 1; h < o.Hosts; h++ {
		w := watches[h]
		w.mu.Lock()
		for _, n := range w.seen {
			if n > 1 {
				rep.Duplicated += uint64(n - 1)
			}
		}
		if got := len(w.seen); got < want {
			rep.Lost += uint64(want - got)
		}
		w.mu.Unlock()
	}
	return rep, nil
}

// natsFloor is a bare NATS publish → subscribe on the same server at the
// same rate: the floor a host → host hop is compared with.
func natsFloor(url string, rate, k, size int) (float64, float64, error) {
	pub, err := nats.Connect(url)
	if err != nil {
		return 0, 0, err
	}
	defer pub.Close()
	sub, err := nats.Connect(url)
	if err != nil {
		return 0, 0, err
	}
	defer sub.Close()
	lat := make([]int32, 0, k)
	var mu sync.Mutex
	got := make(chan struct{})
	s, err := sub.Subscribe("ipcbus.bench.floor", func(m *nats.Msg) {
		now := monoNs()
		mu.Lock()
		lat = append(lat, int32((now/1000)%1e10-unstamp(m.Data)))
		if len(lat) == k {
			close(got)
		}
		mu.Unlock()
	})
	if err != nil {
		return 0, 0, err
	}
	defer s.Unsubscribe()
	if err := sub.Flush(); err != nil {
		return 0, 0, err
	}
	payload := make([]byte, size)
	gap := time.Second / time.Duration(rate)
	next := time.Now()
	for range k {
		time.Sleep(time.Until(next))
		next = next.Add(gap)
		stamp(payload, monoNs()/1000)
		if err := pub.Publish("ipcbus.bench.floor", payload); err != nil {
			return 0, 0, err
		}
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
	}
	mu.Lock()
	defer mu.Unlock()
	return pct(lat, 50), pct(lat, 99), nil
}

// jsFloor is the burst through bare JetStream: k async publishes (4,096 in
// flight at most) to a stream of its own, until an ordered consumer on
// another connection has read them all.
func jsFloor(url string, k, size int) (float64, error) {
	pc, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	cc, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pjs, _ := jetstream.New(pc, jetstream.WithPublishAsyncMaxPending(4096))
	cjs, _ := jetstream.New(cc)
	if _, err := pjs.CreateStream(ctx, jetstream.StreamConfig{Name: "IPCBUS_BENCH_FLOOR", Subjects: []string{"ipcbus.floor.>"}, Storage: jetstream.FileStorage}); err != nil {
		return 0, err
	}
	defer pjs.DeleteStream(context.Background(), "IPCBUS_BENCH_FLOOR")
	cons, err := cjs.OrderedConsumer(ctx, "IPCBUS_BENCH_FLOOR", jetstream.OrderedConsumerConfig{})
	if err != nil {
		return 0, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	done := make(chan error, 1)
	go func() {
		for range k {
			if _, err := it.Next(jetstream.NextContext(ctx)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	payload := make([]byte, size)
	start := time.Now()
	for i := range k {
		if _, err := pjs.PublishAsync("ipcbus.floor.x", payload, jetstream.WithMsgID(strconv.Itoa(i))); err != nil {
			return 0, err
		}
	}
	if err := <-done; err != nil {
		return 0, err
	}
	return float64(k) / time.Since(start).Seconds(), nil
}
