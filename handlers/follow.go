package handlers

import (
	"context"
	"time"
)

// sink is where a stream writes: Server-Sent Events text or WebSocket
// messages.
type sink interface {
	// event writes one event; an error ends the stream (the sink says
	// why in its log).
	event(ev *event) error
	// lost writes the notice of count events from seq from on that the
	// ring no longer holds.
	lost(from, count uint64) error
	// flush sends what the sink holds, after a batch.
	flush() error
	// idle is called on every tick of the keep-alive while nothing
	// happens.
	idle() error
}

// endReason is why follow returned.
type endReason int

const (
	endClient  endReason = iota // the client went away, or a write failed
	endStopped                  // Caddy is stopping (a reload or a stop)
	endClosed                   // the bus stopped: nothing more will come
	endIdle                     // caught up: nothing more to read now (untilIdle)
)

// follow writes what p holds from since on to s, then what arrives, until
// ctx ends (the client), the handler stops, the feed closes, or a write
// fails. Between two checks for the end it writes at most sseBatch events
// and about max_bytes of payload. keep ticks the keep-alive (nil: none).
// With untilIdle it returns endIdle, instead of waiting, once it has
// written all there is; *at is then where to read next.
func (h *Poll) follow(ctx context.Context, p feed, at *uint64, s sink, keep <-chan time.Time, untilIdle bool) endReason {
	since := *at
	defer func() { *at = since }()
	for {
		select { // checked on every round, not only when waiting
		case <-ctx.Done():
			return endClient
		case <-h.stopping.Done():
			return endStopped
		default:
		}
		changed := p.changed()
		start := since
		n, size := 0, int64(0)
		for n < sseBatch && size < h.MaxBytes {
			ev, next, lost := p.read(since)
			if lost > 0 {
				if s.lost(since, lost) != nil {
					ev.close()
					return endClient
				}
			}
			since = next
			if ev == nil {
				break
			}
			err := s.event(ev)
			ev.close()
			if err != nil {
				return endClient
			}
			n++
			size += ev.size()
		}
		if n > 0 || since != start {
			if s.flush() != nil {
				return endClient
			}
		}
		if since != start {
			continue // more may be there: read on before waiting
		}
		if untilIdle {
			if p.closed() {
				return endClosed
			}
			return endIdle
		}
		select {
		case <-changed:
		case <-keep:
			if s.idle() != nil {
				return endClient
			}
		case <-ctx.Done():
			return endClient
		case <-h.stopping.Done():
			return endStopped
		}
		if p.closed() {
			return endClosed
		}
	}
}
