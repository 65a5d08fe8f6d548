package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ipcbus/caddy-ipcbus/internal/chaos"
)

// byteSize is a flag of a size in bytes, parsed as the Caddyfile's size
// option is (go-humanize: 1MiB is 2^20 bytes, 1MB is 10^6).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > 1<<62 {
		return fmt.Errorf("invalid size %q: use bytes, or a unit such as 64KiB or 1MiB", s)
	}
	*b = byteSize(n)
	return nil
}

// chaosMain runs the ring's chaos harness once and prints its result as
// one JSON line. It exits 1 when a reader was handed a corrupt record or
// the harness failed (its accounting did not add up, a process hung).
func chaosMain(args []string) int {
	fs := flag.NewFlagSet("chaos", flag.ExitOnError)
	o := chaos.Options{}
	zoneSize, minSize, maxSize := byteSize(1<<20), byteSize(16), byteSize(0)
	fs.IntVar(&o.Writers, "writers", 3, "writer processes")
	fs.IntVar(&o.Readers, "readers", 2, "reader processes")
	fs.Var(&zoneSize, "zone-size", "zone size (bytes, or 1MiB, 64MiB…)")
	fs.Var(&minSize, "min", "smallest payload (raised to the 32-byte payload header)")
	fs.Var(&maxSize, "max", "largest payload (0: the ring's MaxRecord)")
	fs.DurationVar(&o.Duration, "duration", 60*time.Second, "how long the writers write under chaos")
	fs.BoolVar(&o.Stops, "stops", true, "SIGSTOP a random writer for -stop-min to -stop-max, over and over")
	fs.DurationVar(&o.StopMin, "stop-min", time.Millisecond, "shortest stop")
	fs.DurationVar(&o.StopMax, "stop-max", 100*time.Millisecond, "longest stop")
	fs.BoolVar(&o.Kill, "kill", false, "SIGKILL a random writer every -kill-min to -kill-max and restart it")
	fs.DurationVar(&o.KillMin, "kill-min", 50*time.Millisecond, "shortest time between kills")
	fs.DurationVar(&o.KillMax, "kill-max", 500*time.Millisecond, "longest time between kills")
	fs.DurationVar(&o.WaitMax, "waitmax", 100*time.Millisecond, "the readers' WaitMax for an uncommitted record")
	fs.Uint64Var(&o.Seed, "seed", 0, "seed of the random choices (0: from the clock)")
	fs.StringVar(&o.Dir, "dir", "", "directory for the run's zone (default: /dev/shm when usable)")
	fs.Parse(args)
	o.ZoneSize, o.Min, o.Max = int64(zoneSize), int(minSize), int(maxSize)
	// An interrupt ends the chaos early; the run still settles and reports.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Cancel = ctx.Done()
	res, err := chaos.Run(o)
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	if res.Corrupt > 0 {
		fmt.Fprintf(os.Stderr, "chaos: readers were handed %d corrupt records\n", res.Corrupt)
		return 1
	}
	return 0
}
