package zone

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// BenchmarkRingWrite is one writer appending 16-byte records.
func BenchmarkRingWrite(b *testing.B) {
	z := mustOpen(b, testOptions(b, 64<<20))
	r := z.Ring()
	p := make([]byte, 16)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if _, err := r.Write(Meta{}, p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRingWriteRead writes and reads back one record at a time in one
// goroutine: the cost of the write-commit-read path without contention.
func BenchmarkRingWriteRead(b *testing.B) {
	for _, size := range []int{10, 1024, 10240} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			z := mustOpen(b, testOptions(b, 64<<20))
			r := z.Ring()
			rd := r.NewReader(r.Tail())
			p := make([]byte, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				r.Write(Meta{}, p)
				if _, st := rd.TryRead(); st != Got {
					b.Fatal(st)
				}
			}
		})
	}
}

// BenchmarkRingCrossProcess: this process writes b.N records of 16 bytes
// while a reader process reads them; the time is until the reader has read
// (or lost) the last one. It reports the records/s the reader got and how
// many it lost because the writer lapped it (the ring never slows a writer).
func BenchmarkRingCrossProcess(b *testing.B) {
	o := testOptions(b, 64<<20)
	z := mustOpen(b, o)
	r := z.Ring()
	h := startHelperB(b, o, "counter", fmt.Sprintf("ZONE_START=%d", r.Tail()), fmt.Sprintf("ZONE_TOTAL=%d", b.N))
	h.line(b)
	p := make([]byte, 16)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		binary.LittleEndian.PutUint64(p[4:], uint64(i))
		if _, err := r.Write(Meta{}, p); err != nil {
			b.Fatal(err)
		}
	}
	res := h.resultB(b)
	el := time.Since(start)
	b.StopTimer()
	if res.Err != "" {
		b.Fatal(res.Err)
	}
	b.ReportMetric(float64(res.Got)/el.Seconds(), "records/s")
	b.ReportMetric(float64(res.Overrun+res.Gaps), "lost")
}

// BenchmarkLivenessProbe is one check of a worker's liveness lock.
func BenchmarkLivenessProbe(b *testing.B) {
	z := mustOpen(b, testOptions(b, MinSize))
	h, err := z.NewHandle()
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	h.HoldWorker(0)
	for b.Loop() {
		if alive, _ := z.WorkerAlive(0); !alive {
			b.Fatal("not alive")
		}
	}
}

// BenchmarkNodeLock is one take and release of the node lock.
func BenchmarkNodeLock(b *testing.B) {
	z := mustOpen(b, testOptions(b, MinSize))
	h, err := z.NewHandle()
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	for b.Loop() {
		h.LockNode()
		h.UnlockNode()
	}
}
