package handlers

import (
	"errors"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// A hub writes the Server-Sent Events of the idle HTTP/1.1 streams of one
// ipcbus_poll handler from a few goroutines (its shards), instead of each
// stream's own goroutine: when an event comes, a shard reads it once
// (through the handler's read cache), and writes its frame to each of its
// streams with one non-blocking write(2) on the socket, in a chunk of the
// response. Waking thousands of goroutines and going through the HTTP
// server's writers for each is what a fan-out cost before.
//
// A shard never waits for a socket: a stream whose socket does not take
// all it is given, whose next event is not in the cache (a large payload,
// one in a blob file), or whose write fails is handed back to its own
// goroutine with what was not written; that goroutine writes it under the
// write timeout, catches up as any stream does, and joins again when it
// has caught up. So a slow client costs its own goroutine, never the
// others.
//
// A shard with few streams (hubInline at most) is written by the goroutine
// that learns of the event, when no one else is writing it: the poster, for
// an event this process posted, or the events' delivery goroutine, for the
// others (Bus.OnChange). That saves the wake-up of the shard's goroutine
// between a post and its subscribers; a larger shard, or one busy already,
// is woken as before, so a post writes at most hubInline streams per shard,
// and hubInlineTotal in all, itself.
//
// While a stream is in the hub, its goroutine waits in a read of the
// connection: the read ends when the client goes away, or when the hub
// hands the stream back or Caddy stops (both set a read deadline in the
// past).
type hub struct {
	mu   sync.Mutex
	cur  *hubGen
	next atomic.Uint32
	n    atomic.Int64 // streams in it now (stats.shared counts all handlers')
	back atomic.Int64 // streams handed back to their goroutine, ever
}

// hubGen is the hub's shards for one bus: a new bus (the app restarted
// under the same handler) gets new shards, the old ones end with theirs.
type hubGen struct {
	bus    *events.Bus
	shards []*hubShard
	live   atomic.Int32 // shards whose goroutine runs
	remove func()       // unregisters signal from the bus
}

// signal tells every shard that there may be more to write.
func (g *hubGen) signal() {
	for _, sh := range g.shards {
		sh.signal(g.bus)
	}
}

// ended is called by each shard's goroutine as it returns; the last one
// unregisters the generation from its bus.
func (g *hubGen) ended() {
	if g.live.Add(-1) == 0 {
		g.remove()
	}
}

// Stream states, guarded by hubStream.mu.
const (
	inHub      = iota // written by its shard
	handedBack        // its own goroutine writes it
	left              // its goroutine took it out (client gone, or stopping)
)

// hubStream is one stream in a hub.
type hubStream struct {
	raw  syscall.RawConn
	poke func() // makes the owner's read return (a read deadline in the past)
	keep func(source, name string) bool

	mu    sync.Mutex
	state int
	since uint64 // the next sequence to read
	out   []byte // handed back: bytes the shard could not write, to write first
	err   error  // handed back: the write failed
	last  int64  // when something was last written (nanoseconds, time.Now)
}

// hubShard is one writer goroutine of a hub and its streams.
type hubShard struct {
	h    *Poll
	mu   sync.Mutex
	adds []*hubStream
	dead bool // the shard has ended: it takes no more streams
	kick chan struct{}
	// passMu is held by whoever writes the streams: the shard's goroutine,
	// or a goroutine writing them inline (signal). It guards streams and buf.
	passMu  sync.Mutex
	streams []*hubStream
	buf     []byte
	ended   atomic.Bool // the goroutine has returned
}

// hubWriters is how many shards a hub has by default: one per two cores
// (the kernel's side of each write, and the clients on the same machine,
// need the others), at least one, at most four. On two cores, one writer
// per process gave a lower latency than two, measured (BENCHMARKS.md).
func hubWriters() int { return min(max(runtime.GOMAXPROCS(0)/2, 1), 4) }

// join puts s in the hub, which writes it from its since on; false when
// the hub cannot take it (Caddy stopping, the bus closed).
func (hb *hub) join(h *Poll, s *hubStream, bus *events.Bus) bool {
	if h.stopping.Err() != nil || bus.Closed() {
		return false
	}
	hb.mu.Lock()
	g := hb.cur
	if g == nil || g.bus != bus {
		n := h.StreamWriters
		if n <= 0 {
			n = hubWriters()
		}
		g = &hubGen{bus: bus, shards: make([]*hubShard, n)}
		for i := range g.shards {
			g.shards[i] = &hubShard{h: h, kick: make(chan struct{}, 1)}
		}
		g.live.Store(int32(n))
		g.remove = bus.OnChange(g.signal)
		for _, sh := range g.shards {
			go sh.run(g)
		}
		hb.cur = g
	}
	hb.mu.Unlock()
	s.mu.Lock()
	s.state = inHub
	s.out, s.err = nil, nil
	s.last = time.Now().UnixNano()
	s.mu.Unlock()
	sh := g.shards[hb.next.Add(1)%uint32(len(g.shards))]
	sh.mu.Lock()
	if sh.dead {
		sh.mu.Unlock()
		s.mu.Lock()
		s.state = handedBack
		s.mu.Unlock()
		return false
	}
	stats.shared.Add(1)
	hb.n.Add(1)
	sh.adds = append(sh.adds, s)
	sh.mu.Unlock()
	sh.wake()
	return true
}

// wake makes the shard's goroutine pass over its streams.
func (sh *hubShard) wake() {
	select {
	case sh.kick <- struct{}{}:
	default:
	}
}

// hubInline is the most streams a shard may have to be written inline by
// the goroutine that signals it: a few non-blocking writes, a few
// microseconds each, added to a post's answer. hubInlineTotal is the most
// streams the shared writers of the whole process (every ipcbus_poll
// handler's) may have for any to be written inline, which bounds what one
// post writes itself whatever the number of handlers and shards.
const (
	hubInline      = 8
	hubInlineTotal = 16
)

// signal is called when there may be more to write: the shard's streams are
// written here and now if the shard is small and nobody writes it, else its
// goroutine is woken.
//
// Nothing committed is left unwritten: a signal comes after each commit,
// and either passes itself, after the commit, or finds passMu taken and
// wakes the goroutine, whose next pass starts after the holder's ends.
func (sh *hubShard) signal(bus *events.Bus) {
	if sh.ended.Load() {
		return
	}
	if bus.Closed() || stats.shared.Load() > hubInlineTotal || !sh.passMu.TryLock() {
		sh.wake() // the goroutine ends it, writes it, or passes again after this pass
		return
	}
	sh.take()
	if len(sh.streams) > hubInline {
		sh.passMu.Unlock()
		sh.wake()
		return
	}
	more := sh.pass(bus)
	sh.passMu.Unlock()
	stats.inlinePasses.Add(1)
	if more {
		sh.wake() // a backlog: the goroutine writes the rest
	}
}

// run writes the shard's streams until Caddy stops (their goroutines end
// them then) or the bus closes (everything is handed back).
func (sh *hubShard) run(g *hubGen) {
	defer g.ended()
	defer sh.ended.Store(true)
	h, bus := sh.h, g.bus
	// Keep-alives are checked twice per period, so that none is late by
	// more than half of it.
	keep := time.NewTicker(time.Duration(h.KeepAlive) / 2)
	defer keep.Stop()
	for {
		// One pass, then back to the select even when signals came
		// meanwhile: each of them that found passMu taken kicked, so the
		// select passes again, in turn with keep-alives and the stop (a
		// loop until no signal came would starve both while a large
		// shard's passes take longer than the events' interval).
		sh.passMu.Lock()
		for sh.pass(bus) {
		}
		closed := bus.Closed()
		if closed {
			sh.handBackAll()
		}
		sh.passMu.Unlock()
		if closed {
			return
		}
		select {
		case <-sh.kick:
		case <-keep.C:
			sh.passMu.Lock()
			sh.keepAlive()
			sh.passMu.Unlock()
		case <-h.stopping.Done():
			sh.mu.Lock()
			sh.dead = true // the streams' goroutines end them
			sh.mu.Unlock()
			return
		}
	}
}

// take merges the streams that joined since the last pass (passMu held).
func (sh *hubShard) take() {
	sh.mu.Lock()
	adds := sh.adds
	sh.adds = nil
	sh.mu.Unlock()
	sh.streams = append(sh.streams, adds...)
}

// pass writes to each stream what there is for it, at most sseBatch
// events and about max_bytes; true if a stream got a full batch (there
// may be more to write).
func (sh *hubShard) pass(bus *events.Bus) bool {
	sh.take()
	more := false
	now := time.Now().UnixNano()
	n := 0
	sh.each(func(s *hubStream) {
		if sh.write(bus, s, now) {
			more = true
		}
		if n++; n%hubYieldEvery == 0 {
			// A long pass holds a core for milliseconds: let what else
			// runs on it (the clients, a backend) in between. It returns at
			// once when nothing else wants the core.
			unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		}
	})
	return more
}

// each calls f for every stream of the shard still in the hub (locked),
// and drops the others.
func (sh *hubShard) each(f func(s *hubStream)) {
	kept := sh.streams[:0]
	for _, s := range sh.streams {
		s.mu.Lock()
		if s.state == inHub {
			f(s)
		}
		if s.state == inHub {
			kept = append(kept, s)
		}
		s.mu.Unlock()
	}
	clear(sh.streams[len(kept):])
	sh.streams = kept
}

// hubYieldEvery is how many streams a shard writes between two yields of
// its thread's core to the other processes (sched_yield). At 5,000 SSE
// subscribers on two cores shared with the clients, yielding every 32 or
// 128 streams lowered the median latency by about a tenth to a fifth
// (BENCHMARKS.md); every 8 raised the p99.
const hubYieldEvery = 64

// hubPassBytes bounds the frames one pass writes to a stream (but for a
// single event's, which always goes): what the socket does not take is
// kept for the stream's goroutine, so this bounds what a client that
// stops reading holds, SSE's framing included (a payload of newlines
// grows sevenfold), as a stream's own goroutine's 64 KiB buffer does.
const hubPassBytes = writeChunk

// chunkHead is the room kept before a chunk for its size line.
const chunkHead = 10 // 8 hex digits and CRLF: chunks are under 4 GiB

// write writes to s (locked, in the hub) what there is for it from its
// since on; true if that was a full batch.
func (sh *hubShard) write(bus *events.Bus, s *hubStream, now int64) bool {
	h := sh.h
	b := append(sh.buf[:0], make([]byte, chunkHead)...)
	at := s.since
	var lostFrom, lost uint64
	n, size, full, back := 0, int64(0), false, false
	for {
		if n >= sseBatch || size >= h.MaxBytes {
			full = true
			break
		}
		e := h.cache.entry(bus, at, h.Envelope)
		if e == nil {
			break
		}
		if e.ev == nil && e.next == at {
			next, l, ok := e.skips(s.keep)
			if !ok {
				back = true // too large to keep: its goroutine reads it from the ring
				break
			}
			if l > 0 { // filtered out: past it
				if lost == 0 {
					lostFrom = at
				}
				lost += l
			}
			at = next
			continue
		}
		var frame []byte
		if e.ev != nil && (s.keep == nil || s.keep(e.ev.Source, e.ev.Name)) {
			if frame = e.sseFrame(); frame == nil {
				back = true // its goroutine says why
				break
			}
			if n > 0 && len(b)-chunkHead+len(frame) > hubPassBytes {
				full = true // the rest in the next pass
				break
			}
		}
		if e.lost > 0 {
			if lost == 0 {
				lostFrom = at
			}
			lost += e.lost
		}
		at = e.next
		if frame == nil {
			continue
		}
		if lost > 0 {
			b = appendLost(b, lostFrom, lost)
			lost = 0
		}
		b = append(b, frame...)
		n++
		size += int64(len(e.ev.Data))
	}
	if lost > 0 {
		b = appendLost(b, lostFrom, lost)
	}
	s.since = at
	if len(b) > chunkHead {
		c := sh.chunk(b)
		sent, err := writeNow(s.raw, c)
		s.last = now
		if err != nil || sent < len(c) {
			s.out = append([]byte(nil), c[sent:]...)
			s.err = err
			back = true
		}
	}
	sh.buf = b[:0] // the whole buffer, for the next stream
	if back {
		sh.handBack(s)
		return false
	}
	return full
}

// chunk frames b[chunkHead:] as a chunk of the response, in place, and
// returns the chunk.
func (sh *hubShard) chunk(b []byte) []byte {
	var hb [chunkHead]byte
	head := strconv.AppendUint(hb[:0], uint64(len(b)-chunkHead), 16)
	head = append(head, '\r', '\n')
	start := chunkHead - len(head)
	copy(b[start:], head)
	return append(b[start:], '\r', '\n')
}

// handBack gives s (locked) back to its goroutine.
func (sh *hubShard) handBack(s *hubStream) {
	s.state = handedBack
	stats.shared.Add(-1)
	sh.h.hub.n.Add(-1)
	sh.h.hub.back.Add(1)
	s.poke()
}

// handBackAll gives every stream back to its goroutine, and takes no
// more.
func (sh *hubShard) handBackAll() {
	sh.mu.Lock()
	sh.dead = true
	sh.mu.Unlock()
	sh.take()
	sh.each(sh.handBack)
	sh.streams = nil
}

// keepAlive writes a comment to the streams that had nothing written for
// keepalive.
func (sh *hubShard) keepAlive() {
	sh.take()
	const ka = "e\r\n: keep-alive\n\n\r\n"
	now := time.Now().UnixNano()
	period := int64(sh.h.KeepAlive)
	sh.each(func(s *hubStream) {
		if now-s.last < period {
			return
		}
		s.last = now
		sent, err := writeNow(s.raw, []byte(ka))
		if err != nil || sent < len(ka) {
			s.out = []byte(ka[sent:])
			s.err = err
			sh.handBack(s)
		}
	})
}

// writeNow writes what the socket takes now of b, without waiting.
func writeNow(raw syscall.RawConn, b []byte) (int, error) {
	sent := 0
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for sent < len(b) {
			n, err := unix.Write(int(fd), b[sent:])
			if n > 0 {
				sent += n
			}
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return true
			case err != nil:
				werr = err
				return true
			case n == 0:
				werr = errors.New("socket took nothing")
				return true
			}
		}
		return true
	})
	if err != nil {
		return sent, err
	}
	return sent, werr
}

// appendLost appends the notice of count events from from on that the
// ring no longer holds.
func appendLost(b []byte, from, count uint64) []byte {
	b = append(b, "event: "+NoticeLost+"\ndata: {\"from\":"...)
	b = strconv.AppendUint(b, from, 10)
	b = append(b, `,"count":`...)
	b = strconv.AppendUint(b, count, 10)
	return append(b, `,"reason":"overrun"}`+"\n\n"...)
}
