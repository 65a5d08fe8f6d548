package chaos

import (
	"time"
)

// Options configure a chaos run. Zero fields take the defaults noted.
type Options struct {
	// Writers and Readers are the numbers of processes (3 and 2).
	Writers, Readers int
	// ZoneSize is the zone size in bytes (1 MiB).
	ZoneSize int64
	// Min and Max bound the payload size in bytes; Max 0 means the ring's
	// MaxRecord, and Min is raised to HeaderSize.
	Min, Max int
	// Duration is how long the writers write under chaos (10 s).
	Duration time.Duration
	// Stops makes the driver SIGSTOP a random writer for a random
	// StopMin–StopMax (1–100 ms) and SIGCONT it, over and over, with a
	// random 0–StopMax/Writers between stops.
	Stops            bool
	StopMin, StopMax time.Duration
	// Kill makes the driver SIGKILL a random writer every KillMin–KillMax
	// (50–500 ms) and start it again as a new incarnation. With Stops on,
	// the writer killed is the one stopped at that moment.
	Kill             bool
	KillMin, KillMax time.Duration
	// WaitMax is the readers' zone.Reader WaitMax (100 ms).
	WaitMax time.Duration
	// Dir is where the run's temporary directory is made (the zone
	// package's default directory, /dev/shm when usable).
	Dir string
	// Seed seeds every random choice (0: from the clock); the seed used is
	// in the Result.
	Seed uint64
	// ReadTimeout bounds how long the readers may take to reach the final
	// tail once the writers are done (60 s).
	ReadTimeout time.Duration
	// Cancel, when closed, ends the chaos early; the run then finishes as
	// if the duration had passed.
	Cancel <-chan struct{}
}

func (o *Options) defaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.Writers <= 0 {
		o.Writers = 3
	}
	if o.Readers <= 0 {
		o.Readers = 2
	}
	if o.ZoneSize == 0 {
		o.ZoneSize = 1 << 20
	}
	def(&o.Duration, 10*time.Second)
	def(&o.StopMin, time.Millisecond)
	def(&o.StopMax, 100*time.Millisecond)
	def(&o.KillMin, 50*time.Millisecond)
	def(&o.KillMax, 500*time.Millisecond)
	def(&o.WaitMax, 100*time.Millisecond)
	def(&o.ReadTimeout, 60*time.Second)
	o.StopMax = max(o.StopMax, o.StopMin)
	o.KillMax = max(o.KillMax, o.KillMin)
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
}

// Result is the outcome of a run, printed by the bench as one JSON line.
type Result struct {
	Writers   int     `json:"writers"`
	Readers   int     `json:"readers"`
	ZoneSize  int64   `json:"zone_size"`
	MinSize   int     `json:"min_size"`
	MaxSize   int     `json:"max_size"`
	MaxRecord int     `json:"max_record"`
	Seconds   float64 `json:"seconds"`
	Seed      uint64  `json:"seed"`
	Stops     uint64  `json:"stops"`
	Kills     uint64  `json:"kills"`
	// Written sums the writers' reports of records committed: exact when
	// no writer was killed (WrittenExact), else with the killed writers'
	// last periodic counts (printed every 20 ms).
	Written      uint64 `json:"written"`
	WrittenExact bool   `json:"written_exact"`
	Abandoned    uint64 `json:"abandoned"`
	Overwritten  uint64 `json:"overwritten"`
	TooLarge     uint64 `json:"too_large"`
	// Start is the sequence every reader started at (J), Tail the final
	// tail (T), TailSpan T−J.
	Start    uint64 `json:"start"`
	Tail     uint64 `json:"tail"`
	TailSpan uint64 `json:"tail_span"`
	// Corrupt sums the readers' corrupt records.
	Corrupt uint64         `json:"corrupt"`
	Results []ReaderReport `json:"reader_results"`
	// Failures are the harness's own failures: accounting that does not
	// add up, a child that failed or hung. Corrupt records are not
	// failures of the harness but findings about the ring.
	Failures []string `json:"failures,omitempty"`
}
