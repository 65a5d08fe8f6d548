package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// ReaderConfig is where a reader starts and how it waits.
type ReaderConfig struct {
	// Start is the first sequence to read.
	Start uint64
	// WaitMax is the reader's zone.Reader WaitMax (0: the ring's default).
	WaitMax time.Duration
	// Examples is how many corrupt records to describe (0: 8).
	Examples int
}

// Corrupt describes one corrupt record.
type Corrupt struct {
	Seq  uint64 `json:"seq"`
	Size int    `json:"size"`
	// Meta is the identity the ring's metadata gives, Claimed the one in
	// the payload's header.
	Meta    ID `json:"meta"`
	Claimed ID `json:"claimed"`
	// Kind is "payload" (bytes that are not the writer's), "identity"
	// (an intact payload of another record) or "order" (a repeat or a step
	// back of a writer's counter).
	Kind string `json:"kind"`
	Damage
}

// ReaderReport is a reader's result, printed as one JSON line.
type ReaderReport struct {
	Start    uint64 `json:"start"`
	Next     uint64 `json:"next"`
	Received uint64 `json:"received"`
	Corrupt  uint64 `json:"corrupt"`
	Gaps     uint64 `json:"gaps"`
	Overruns uint64 `json:"overruns"`
	// Bytes is the payload bytes received and verified.
	Bytes uint64 `json:"bytes"`
	// Ring is the zone.Reader's own counts: read, overrun, gaps.
	Ring      [3]uint64 `json:"ring_counts"`
	Accounted uint64    `json:"accounted"`
	Expected  uint64    `json:"expected"`
	// Kinds counts corrupt records by the first thing found wrong.
	Kinds    map[string]uint64 `json:"corrupt_kinds,omitempty"`
	Examples []Corrupt         `json:"examples,omitempty"`
	Err      string            `json:"err,omitempty"`
}

// checker verifies records and each writer incarnation's order.
type checker struct {
	rep  *ReaderReport
	max  int
	last map[[2]uint32]uint64 // counter+1 of the last record per (writer, inc)
}

// record checks one record the ring handed out, counting it.
func (c *checker) record(rec zone.Record) {
	c.rep.Received++
	c.rep.Bytes += uint64(len(rec.Data))
	meta := ID{Writer: rec.Kind, Inc: rec.Gen, Counter: rec.Aux}
	id, d := Check(rec.Data)
	kind := ""
	switch {
	case d.What != "":
		kind = "payload"
	case id != meta:
		kind, d.What = "identity", "the payload's header is another record's than the ring's metadata says"
	default:
		k := [2]uint32{id.Writer, id.Inc}
		if prev := c.last[k]; prev > id.Counter {
			kind, d.What = "order", fmt.Sprintf("counter %d after %d from the same writer incarnation", id.Counter, prev-1)
		}
		c.last[k] = id.Counter + 1
	}
	if kind == "" {
		return
	}
	c.rep.Corrupt++
	if c.rep.Kinds == nil {
		c.rep.Kinds = map[string]uint64{}
	}
	c.rep.Kinds[kind]++
	if len(c.rep.Examples) < c.max {
		c.rep.Examples = append(c.rep.Examples, Corrupt{Seq: rec.Seq, Size: len(rec.Data), Meta: meta, Claimed: id, Kind: kind, Damage: d})
	}
}

// Reader reads r from c.Start, verifying every record, until the final
// tail arrives on final and the reader's cursor has reached it. A closed
// final without a value ends the read with an error.
func Reader(r *zone.Ring, c ReaderConfig, final <-chan uint64) ReaderReport {
	rep := ReaderReport{Start: c.Start}
	ck := checker{rep: &rep, max: c.Examples, last: map[[2]uint32]uint64{}}
	if ck.max == 0 {
		ck.max = 8
	}
	rd := r.NewReader(c.Start)
	rd.SetWaitMax(c.WaitMax)
	end, ended := uint64(0), false
	for !ended || rd.Next() < end {
		if !ended {
			select {
			case t, ok := <-final:
				if !ok {
					rep.Err = "the driver went away before it sent the final tail"
					return finish(rep, rd)
				}
				end, ended = t, true
				continue
			default:
			}
		}
		rec, st := rd.Read(20 * time.Millisecond)
		switch st {
		case zone.Got:
			ck.record(rec)
		case zone.Gap:
			rep.Gaps += rec.Lost
		case zone.Overrun:
			rep.Overruns += rec.Lost
		}
	}
	rep.Expected = end - c.Start
	return finish(rep, rd)
}

func finish(rep ReaderReport, rd *zone.Reader) ReaderReport {
	rep.Next = rd.Next()
	rep.Ring[0], rep.Ring[1], rep.Ring[2] = rd.Counts()
	rep.Accounted = rep.Received + rep.Gaps + rep.Overruns
	return rep
}

// readerMain is the reader process: it prints "ready", reads, takes the
// final tail from a line of its standard input, and prints its report.
func readerMain() int {
	z, err := zone.Open(zone.Options{Name: os.Getenv(envName), Dir: os.Getenv(envDir)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos reader:", err)
		return 2
	}
	defer z.Close()
	final := make(chan uint64, 1)
	go func() {
		defer close(final)
		l, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if t, perr := strconv.ParseUint(strings.TrimSpace(l), 10, 64); perr == nil && (err == nil || l != "") {
			final <- t
		}
	}()
	c := ReaderConfig{Start: envUint(envStart), WaitMax: envDuration(envWaitMax)}
	fmt.Println("ready")
	rep := Reader(z.Ring(), c, final)
	json.NewEncoder(os.Stdout).Encode(rep)
	if rep.Err != "" {
		return 1
	}
	return 0
}
