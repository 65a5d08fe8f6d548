package ipcbus

import (
	"context"
	"sync/atomic"

	"go.uber.org/zap"
)

// queue is a bounded FIFO between a delivery goroutine, which must never
// block on it, and the goroutine of a reaction (emitter, webhook): at most
// n items and maxBytes of their data.
type queue[T any] struct {
	ch       chan queued[T]
	bytes    atomic.Int64
	maxBytes int64
}

type queued[T any] struct {
	v    T
	size int64
}

func newQueue[T any](n int, maxBytes int64) *queue[T] {
	return &queue[T]{ch: make(chan queued[T], n), maxBytes: maxBytes}
}

// push queues v, whose data is size bytes; false when the queue is full.
func (q *queue[T]) push(v T, size int64) bool {
	if q.bytes.Add(size) > q.maxBytes {
		q.bytes.Add(-size)
		return false
	}
	select {
	case q.ch <- queued[T]{v, size}:
		return true
	default:
		q.bytes.Add(-size)
		return false
	}
}

// taken gives back the bytes of an item received from ch.
func (q *queue[T]) taken(it queued[T]) T {
	q.bytes.Add(-it.size)
	return it.v
}

// drain drops what is queued and returns how many items it dropped.
func (q *queue[T]) drain() uint64 {
	var n uint64
	for {
		select {
		case it := <-q.ch:
			q.taken(it)
			n++
		default:
			return n
		}
	}
}

// countDrop counts n drops in c and reports whether to log them: when
// they take the count past a power of two (the 1st, 2nd, 4th, 8th… drop).
func countDrop(c *atomic.Uint64, n uint64) bool {
	total := c.Add(n)
	return isPow2Between(total-n, total)
}

// isPow2Between reports whether a power of two lies in (lo, hi].
func isPow2Between(lo, hi uint64) bool {
	for p := uint64(1); p != 0 && p <= hi; p <<= 1 {
		if p > lo {
			return true
		}
	}
	return false
}

// serve hands the queued items to handle, one at a time, until ctx ends;
// then it drops what is left, counts it in dropped and logs msg.
func (q *queue[T]) serve(ctx context.Context, handle func(T), dropped *atomic.Uint64, log *zap.Logger, msg string) {
	for {
		select {
		case <-ctx.Done():
			if n := q.drain(); countDrop(dropped, n) {
				log.Warn(msg, zap.Uint64("dropped", n))
			}
			return
		case it := <-q.ch:
			handle(q.taken(it))
		}
	}
}
