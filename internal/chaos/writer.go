package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// WriterConfig is what one writer process writes.
type WriterConfig struct {
	// Writer and Inc name the writer and its incarnation (a restarted
	// writer keeps its id and gets a new incarnation).
	Writer, Inc uint32
	// Min and Max bound the payload size; Max 0 or over the ring's limit
	// means the limit, Min is raised to HeaderSize.
	Min, Max int
	// Seed seeds the sizes.
	Seed uint64
	// Every is how often a report line is printed while writing.
	Every time.Duration
}

// WriterReport is a writer's counts, printed as a JSON line.
type WriterReport struct {
	Writer      uint32 `json:"writer"`
	Inc         uint32 `json:"inc"`
	PID         int    `json:"pid"`
	Attempts    uint64 `json:"attempts"`
	Written     uint64 `json:"written"`
	Abandoned   uint64 `json:"abandoned"`
	Overwritten uint64 `json:"overwritten"`
	TooLarge    uint64 `json:"too_large"`
	Final       bool   `json:"final"`
	Err         string `json:"err,omitempty"`
}

// sizes clamps the configured payload sizes to the ring.
func sizes(min, max, limit int) (int, int) {
	if max <= 0 || max > limit {
		max = limit
	}
	min = clamp(min, HeaderSize, max)
	return min, max
}

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

// Writer writes records to r as fast as it can until stop is set, counting
// each outcome, and prints a report line to out every c.Every and at the
// end. Abandoned, overwritten and too-large writes are counted; any other
// error ends the loop and is returned.
func Writer(r *zone.Ring, c WriterConfig, stop *atomic.Bool, out io.Writer) (WriterReport, error) {
	lo, hi := sizes(c.Min, c.Max, r.MaxRecord())
	rng := rand.New(rand.NewPCG(c.Seed, uint64(c.Writer)<<32|uint64(c.Inc)))
	buf := make([]byte, hi)
	rep := WriterReport{Writer: c.Writer, Inc: c.Inc, PID: os.Getpid()}
	meta := zone.Meta{Kind: c.Writer, PID: uint32(os.Getpid()), Gen: c.Inc}
	enc := json.NewEncoder(out)
	last := time.Now()
	var err error
	for !stop.Load() {
		id := ID{Writer: c.Writer, Inc: c.Inc, Counter: rep.Attempts}
		p := buf[:lo+rng.IntN(hi-lo+1)]
		Fill(p, id)
		meta.Aux = id.Counter
		rep.Attempts++
		_, werr := r.Write(meta, p)
		switch {
		case werr == nil:
			rep.Written++
		case errors.Is(werr, zone.ErrAbandoned):
			rep.Abandoned++
		case errors.Is(werr, zone.ErrOverwritten):
			rep.Overwritten++
		case errors.Is(werr, zone.ErrTooLarge):
			rep.TooLarge++
		default:
			err = fmt.Errorf("write %d: %w", id.Counter, werr)
		}
		if err != nil {
			rep.Err = err.Error()
			break
		}
		if c.Every > 0 && rep.Attempts%16 == 0 && time.Since(last) >= c.Every {
			last = time.Now()
			enc.Encode(rep)
		}
	}
	rep.Final = true
	enc.Encode(rep)
	return rep, err
}

// writerMain is the writer process: it writes until its standard input
// is closed.
func writerMain() int {
	z, err := zone.Open(zone.Options{Name: os.Getenv(envName), Dir: os.Getenv(envDir)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos writer:", err)
		return 2
	}
	defer z.Close()
	var stop atomic.Bool
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop.Store(true)
	}()
	c := WriterConfig{
		Writer: uint32(envUint(envWriter)), Inc: uint32(envUint(envInc)),
		Min: int(envUint(envMin)), Max: int(envUint(envMax)), Seed: envUint(envSeed),
		Every: 20 * time.Millisecond,
	}
	if _, err := Writer(z.Ring(), c, &stop, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chaos writer:", err)
		return 1
	}
	return 0
}
