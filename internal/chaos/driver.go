package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// run is the state of one chaos run.
type run struct {
	o       Options
	dir     string
	rng     *rand.Rand
	res     Result
	writers []*child // the live incarnation of each writer id
	dead    []*child // killed incarnations
	readers []*child
	inc     uint32
}

// Run creates a fresh zone, starts the reader and writer processes, keeps
// stopping and killing writers for the duration, then stops the writers,
// hands the final tail to the readers and collects their reports. The
// error reports the harness's failures (also in Result.Failures); corrupt
// records are counted in the Result, not reported as an error.
func Run(o Options) (Result, error) {
	o.defaults()
	base := o.Dir
	if base == "" {
		base = zone.DefaultDir()
	}
	dir, err := os.MkdirTemp(base, "ipcbus-chaos-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	z, err := zone.Open(zone.Options{Name: "chaos", Dir: dir, Size: o.ZoneSize})
	if err != nil {
		return Result{}, err
	}
	defer z.Close()
	r := z.Ring()
	c := &run{o: o, dir: dir, rng: rand.New(rand.NewPCG(o.Seed, o.Seed^0x5851f42d4c957f2d))}
	defer c.cleanup()
	c.res = Result{Writers: o.Writers, Readers: o.Readers, ZoneSize: o.ZoneSize, MaxRecord: r.MaxRecord(), Seed: o.Seed}
	c.res.MinSize, c.res.MaxSize = sizes(o.Min, o.Max, r.MaxRecord())
	c.res.Start = r.Tail()
	if err := c.startReaders(); err != nil {
		return c.res, err
	}
	began := time.Now()
	for i := 0; i < o.Writers; i++ {
		w, err := c.startWriter(uint32(i))
		if err != nil {
			return c.res, err
		}
		c.writers = append(c.writers, w)
	}
	if err := c.chaos(began.Add(o.Duration)); err != nil {
		return c.res, err
	}
	c.stopWriters()
	c.res.Seconds = time.Since(began).Seconds()
	c.res.WrittenExact = c.res.Kills == 0
	c.res.Tail = r.Tail()
	c.res.TailSpan = c.res.Tail - c.res.Start
	c.collect()
	if len(c.res.Failures) > 0 {
		return c.res, errors.New(strings.Join(c.res.Failures, "; "))
	}
	return c.res, nil
}

func (c *run) fail(format string, a ...any) {
	c.res.Failures = append(c.res.Failures, fmt.Sprintf(format, a...))
}

func (c *run) env(role string, kv ...any) []string {
	env := []string{envRole + "=" + role, envDir + "=" + c.dir, envName + "=chaos"}
	for i := 0; i+1 < len(kv); i += 2 {
		env = append(env, fmt.Sprintf("%s=%v", kv[i], kv[i+1]))
	}
	return env
}

func (c *run) startReaders() error {
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < c.o.Readers; i++ {
		rd, err := start(fmt.Sprintf("reader %d", i), c.env("reader", envIndex, i, envStart, c.res.Start, envWaitMax, int64(c.o.WaitMax)), true)
		if err != nil {
			return err
		}
		c.readers = append(c.readers, rd)
		if l, err := rd.line(deadline); err != nil || l != "ready" {
			return fmt.Errorf("reader %d did not get ready: %q %v", i, l, err)
		}
	}
	return nil
}

func (c *run) startWriter(id uint32) (*child, error) {
	c.inc++
	return start(fmt.Sprintf("writer %d incarnation %d", id, c.inc), c.env("writer",
		envWriter, id, envInc, c.inc, envMin, c.o.Min, envMax, c.o.Max, envSeed, c.o.Seed), false)
}

// between is a random duration in [lo, hi].
func (c *run) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)+1))
}

// chaos stops and kills writers until deadline (or Options.Cancel).
func (c *run) chaos(deadline time.Time) error {
	// sleep waits for d, at most until the deadline; false means the
	// deadline has come.
	sleep := func(d time.Duration) bool {
		select {
		case <-time.After(min(d, time.Until(deadline))):
		case <-c.o.Cancel:
			deadline = time.Now()
		}
		return time.Now().Before(deadline)
	}
	nextKill := time.Now().Add(c.between(c.o.KillMin, c.o.KillMax))
	for time.Now().Before(deadline) {
		i := c.rng.IntN(len(c.writers))
		w := c.writers[i]
		var more bool
		switch {
		case c.o.Stops:
			w.signal(syscall.SIGSTOP)
			c.res.Stops++
			more = sleep(c.between(c.o.StopMin, c.o.StopMax))
		case c.o.Kill:
			more = sleep(time.Until(nextKill))
		default:
			more = sleep(time.Until(deadline))
		}
		if more && c.o.Kill && !time.Now().Before(nextKill) {
			// With stops on, the writer killed is the one stopped now.
			if err := c.killWriter(i); err != nil {
				return err
			}
			nextKill = time.Now().Add(c.between(c.o.KillMin, c.o.KillMax))
			continue
		}
		if c.o.Stops {
			w.signal(syscall.SIGCONT)
			// A random breather, so that each writer is stopped about
			// 1/(Writers+1) of the time and a lone writer still writes.
			sleep(c.between(0, c.o.StopMax/time.Duration(len(c.writers))))
		}
	}
	return nil
}

// killWriter kills writer i (stopped or not) and starts a new incarnation.
func (c *run) killWriter(i int) error {
	w := c.writers[i]
	w.signal(syscall.SIGKILL)
	w.wait(time.Now().Add(10 * time.Second))
	c.dead = append(c.dead, w)
	c.res.Kills++
	nw, err := c.startWriter(uint32(i))
	if err != nil {
		return err
	}
	c.writers[i] = nw
	return nil
}

// stopWriters asks every live writer to stop, waits for them, and sums the
// reports of every incarnation.
func (c *run) stopWriters() {
	for _, w := range c.writers {
		w.signal(syscall.SIGCONT)
		w.in.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, w := range c.writers {
		if err := w.wait(deadline); err != nil {
			c.fail("%s: %v", w.name, err)
		}
	}
	for _, w := range append(c.dead, c.writers...) {
		var rep WriterReport
		if l := w.lastLine(); l != "" {
			if err := json.Unmarshal([]byte(l), &rep); err != nil {
				c.fail("%s: bad report %q: %v", w.name, l, err)
			}
		}
		if rep.Err != "" {
			c.fail("%s: %s", w.name, rep.Err)
		}
		c.res.Written += rep.Written
		c.res.Abandoned += rep.Abandoned
		c.res.Overwritten += rep.Overwritten
		c.res.TooLarge += rep.TooLarge
	}
}

// collect hands the final tail to the readers and checks their reports.
func (c *run) collect() {
	for _, rd := range c.readers {
		fmt.Fprintf(rd.in, "%d\n", c.res.Tail)
		rd.in.Close()
	}
	deadline := time.Now().Add(c.o.ReadTimeout)
	for i, rd := range c.readers {
		var rep ReaderReport
		l, err := rd.line(deadline)
		if err == nil {
			err = json.Unmarshal([]byte(l), &rep)
		}
		if err != nil {
			c.fail("reader %d: no report: %v", i, err)
		} else {
			c.check(i, &rep)
		}
		c.res.Results = append(c.res.Results, rep)
		c.res.Corrupt += rep.Corrupt
		if err := rd.wait(deadline); err != nil {
			c.fail("reader %d: %v", i, err)
		}
	}
}

// check is the exact accounting of one reader: every sequence from J to T
// was received, lost to a gap or lost to an overrun, once.
func (c *run) check(i int, rep *ReaderReport) {
	want := c.res.TailSpan
	if rep.Err != "" {
		c.fail("reader %d: %s", i, rep.Err)
	}
	if rep.Accounted != want || rep.Expected != want || rep.Next != c.res.Tail {
		c.fail("reader %d: received %d + gaps %d + overruns %d = %d, cursor %d; want %d (tail %d − start %d)",
			i, rep.Received, rep.Gaps, rep.Overruns, rep.Accounted, rep.Next, want, c.res.Tail, c.res.Start)
	}
	if rep.Ring != [3]uint64{rep.Received, rep.Overruns, rep.Gaps} {
		c.fail("reader %d: the zone.Reader counts %v (read, overrun, gaps) differ from the reader's own", i, rep.Ring)
	}
}

// cleanup kills whatever is still running after a failed run.
func (c *run) cleanup() {
	for _, ch := range append(append([]*child{}, c.writers...), c.readers...) {
		ch.kill()
	}
}
