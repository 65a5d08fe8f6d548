package handlers

import (
	"bufio"
	"bytes"
	"sync"
	"sync/atomic"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// Sizes of readCache.
const (
	// readCacheSlots is how many positions of the ring a handler keeps read:
	// the last ones, where the streams that keep up read.
	readCacheSlots = 512
	// readCacheMaxData is the largest inline payload kept; a larger event
	// is read by each stream itself, as is a payload in a blob file.
	readCacheMaxData = 8 << 10
)

// readCache reads each event of the bus once for all the streams of one
// ipcbus_poll handler in this process, and encodes its Server-Sent Events
// frame once: a stream reads the ring itself only when it is far behind,
// on an event too large to keep, or when nothing is there yet. A position
// of the ring is kept as what an unfiltered read from it found (an
// event, where to read next, and how many were lost before it), which
// never changes once found; each stream applies its own filter to it.
type readCache struct {
	gen atomic.Pointer[cacheGen]
	mu  sync.Mutex // one reader fills a position; the others wait for it
}

// cacheGen is the cache of one bus: a new bus (the app restarted) starts
// an empty one.
type cacheGen struct {
	bus   *events.Bus
	slots [readCacheSlots]atomic.Pointer[cacheEntry]
}

// cacheEntry is what an unfiltered read from since found.
type cacheEntry struct {
	since, next, lost uint64
	ev                *events.Event // nil: too large to keep, read it from the ring
	// large names the event too large to keep (ev nil, next == since), so
	// that a stream whose filter drops it need not read it.
	large         *largeEvent
	frameOnce     sync.Once
	frame         []byte // the SSE frame of ev (envelope or not: the handler's)
	frameEnvelope bool
	jsonOnce      sync.Once
	json          []byte // ev as the JSON object of a long-poll page
}

// largeEvent is what a filter needs of an event too large to keep, and
// where to read after it.
type largeEvent struct {
	source, name string
	next, lost   uint64
}

// skips reports whether keep drops the entry's event too large to keep,
// with where to read after it and how many were lost before it.
func (c *cacheEntry) skips(keep func(source, name string) bool) (uint64, uint64, bool) {
	if c.large == nil || keep == nil || keep(c.large.source, c.large.name) {
		return 0, 0, false
	}
	return c.large.next, c.large.lost, true
}

// eventJSON is the entry's event as the JSON object of a long-poll page
// (writeEventJSON), encoded on first use: the long-polls that an event
// wakes all write it.
func (c *cacheEntry) eventJSON() []byte {
	c.jsonOnce.Do(func() {
		var buf bytes.Buffer
		bw := bufio.NewWriterSize(&buf, 512)
		if writeEventJSON(bw, &event{Event: c.ev}) == nil && bw.Flush() == nil {
			c.json = buf.Bytes()
		}
	})
	return c.json
}

// sseFrame is the Server-Sent Events frame of the entry's event, encoded
// on first use.
func (c *cacheEntry) sseFrame() []byte {
	c.frameOnce.Do(func() {
		if !c.frameEnvelope {
			c.frame = appendSSE(make([]byte, 0, len(c.ev.Data)+len(c.ev.Name)+48), c.ev.Seq, c.ev.Name, c.ev.Data)
			return
		}
		var buf bytes.Buffer
		bw := bufio.NewWriterSize(&buf, 512)
		if writeSSE(bw, &event{Event: c.ev}, c.frameEnvelope) == nil && bw.Flush() == nil {
			c.frame = buf.Bytes()
		}
	})
	return c.frame
}

// entry is what an unfiltered read of bus from since finds: nil when there
// is nothing there yet (an event still being written among it).
func (rc *readCache) entry(bus *events.Bus, since uint64, envelope bool) *cacheEntry {
	g := rc.gen.Load()
	if g == nil || g.bus != bus {
		rc.mu.Lock()
		if g = rc.gen.Load(); g == nil || g.bus != bus {
			g = &cacheGen{bus: bus}
			rc.gen.Store(g)
		}
		rc.mu.Unlock()
	}
	slot := &g.slots[since%readCacheSlots]
	if e := slot.Load(); e != nil && e.since == since {
		return e
	}
	if since >= bus.Tail() {
		return nil // nothing posted there yet: no need to wait for the lock
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if e := slot.Load(); e != nil && e.since == since {
		return e
	}
	evs, next, lost := bus.RangeRefs(since, 1, nil)
	if len(evs) == 0 && next == since {
		return nil
	}
	e := &cacheEntry{since: since, next: next, lost: lost, frameEnvelope: envelope}
	if len(evs) > 0 && evs[0].Blob == nil && len(evs[0].Data) <= readCacheMaxData {
		e.ev = &evs[0]
	} else if len(evs) > 0 {
		e.large = &largeEvent{source: evs[0].Source, name: evs[0].Name, next: next, lost: lost}
		e.next, e.lost = since, 0 // read it from the ring, filtered, each stream
	}
	slot.Store(e)
	return e
}

// read is reader.read through the cache: the next event after since that
// keep keeps (nil if none yet), the sequence to read next, and how many
// were lost.
func (rc *readCache) read(p reader, since uint64) (*event, uint64, uint64) {
	var lost uint64
	for {
		e := rc.entry(p.bus, since, p.envelope)
		if e == nil {
			return nil, since, lost
		}
		if e.ev == nil && e.next == since { // too large to keep: read it directly, unless filtered out
			if next, l, ok := e.skips(p.keep); ok {
				lost += l
				since = next
				continue
			}
			ev, next, l := p.readDirect(since)
			return ev, next, lost + l
		}
		lost += e.lost
		since = e.next
		if e.ev == nil {
			continue // only lost events or gaps there
		}
		if p.keep != nil && !p.keep(e.ev.Source, e.ev.Name) {
			continue
		}
		return &event{Event: e.ev, cached: e}, since, lost
	}
}
