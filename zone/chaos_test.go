package zone_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/internal/chaos"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// The chaos harness re-runs this test binary as its writer and reader
// processes; they take over here, before the tests run.
func init() { chaos.MaybeChild() }

// TestRingChaos runs writer processes that are stopped and killed at
// random moments against reader processes that verify every byte of every
// record: the ring must never hand out a record its writer did not write,
// and every reader must account for every sequence number exactly.
func TestRingChaos(t *testing.T) {
	small, large := 17*time.Second, 6*time.Second
	if testing.Short() {
		small, large = 4*time.Second, 2*time.Second
	}
	t.Run("1MiB", func(t *testing.T) {
		runChaos(t, chaos.Options{ZoneSize: 1 << 20, Min: 16, Duration: small}, 1000)
	})
	t.Run("64MiB", func(t *testing.T) {
		runChaos(t, chaos.Options{ZoneSize: zone.DefaultSize, Min: 64 << 10, Duration: large}, 100)
	})
}

func runChaos(t *testing.T, o chaos.Options, minReceived uint64) {
	o.Writers, o.Readers, o.Stops, o.Kill = 3, 2, true, true
	res, err := chaos.Run(o)
	line, _ := json.Marshal(res)
	t.Logf("%s", line)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	for i, rd := range res.Results {
		if rd.Corrupt != 0 {
			t.Errorf("reader %d was handed %d corrupt records (%v); first: %+v", i, rd.Corrupt, rd.Kinds, rd.Examples[0])
		}
		if rd.Accounted != res.TailSpan {
			t.Errorf("reader %d accounted for %d sequences, want %d", i, rd.Accounted, res.TailSpan)
		}
		if rd.Received <= minReceived {
			t.Errorf("reader %d received %d records, want more than %d", i, rd.Received, minReceived)
		}
	}
}
