package workermgr

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkHeartbeat is one heartbeat stamp of a live worker.
func BenchmarkHeartbeat(b *testing.B) {
	z := openZone(b)
	w, err := Join(z, Config{Generation: 1, Heartbeat: time.Hour, DeadAfter: 2 * time.Hour, ProbeInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Leave(ReasonShutdown)
	for b.Loop() {
		w.Beat(time.Now())
	}
}

// BenchmarkProbe is one probe round over n other live workers: a liveness
// lock check and a heartbeat age check each.
func BenchmarkProbe(b *testing.B) {
	for _, n := range []int{4, 32} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			z := openZone(b)
			var ws []*Worker
			for i := 0; i <= n; i++ {
				w, err := Join(z, Config{Generation: i + 1, Heartbeat: time.Hour, DeadAfter: 2 * time.Hour, ProbeInterval: time.Hour})
				if err != nil {
					b.Fatal(err)
				}
				ws = append(ws, w)
			}
			defer func() {
				for _, w := range ws {
					w.Leave(ReasonShutdown)
				}
			}()
			for b.Loop() {
				ws[0].Probe(time.Now())
			}
		})
	}
}
