package handlers

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unicode/utf8"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// event is an event as pages and streams write it: its payload in memory
// (Event.Data, at most what the ring carries) or in its blob file, open
// and read a piece at a time, so that a request never holds a large
// payload whole. close gives the file back.
//
// An IPC alert (ipcbus_poll alerts) is one too: its name in Name, its
// sender in PID and Generation, alert set.
type event struct {
	*events.Event
	f        *os.File // the blob's, when the payload is in a blob file
	blobName string   // the blob file's name, "" without one
	blobSize int64
	alert    bool        // an IPC alert, not a bus event
	toAll    bool        // an alert to every process
	cached   *cacheEntry // the handler's read of it, shared by its streams (never to change)
}

// openEvent opens the blob of e, if it has one. A blob removed since it
// was read fails (the caller counts it lost).
func openEvent(e *events.Event) (*event, error) {
	ev := &event{Event: e}
	if e.Blob != nil {
		f, err := e.Blob.Open()
		if err != nil {
			return nil, err
		}
		ev.f, ev.blobName, ev.blobSize = f, e.Blob.Name, e.Blob.Size
	}
	return ev, nil
}

// openAlert makes an alert from the ring an event to write, its blob file
// open if it has one. A blob removed since it was read fails (the caller
// counts it lost).
func openAlert(c *ipc.IPC, a *ipc.AlertRef) (*event, error) {
	ev := &event{Event: &events.Event{Seq: a.Seq, Name: a.Name, Data: a.Data, PID: a.Sender, Generation: a.SenderGeneration, Time: a.Time}, alert: true, toAll: a.ToAll}
	if a.Blob != "" {
		f, err := c.OpenBlob(a)
		if err != nil {
			return nil, err
		}
		ev.f, ev.blobName, ev.blobSize = f, a.Blob, a.Size
	}
	return ev, nil
}

// cachedJSON is the event's JSON object as the handler's read cache
// holds it, encoded once for all its long-polls (nil: encode it).
func (e *event) cachedJSON() []byte {
	if e.cached == nil || e.alert || e.cached.ev != e.Event {
		return nil
	}
	return e.cached.eventJSON()
}

func (e *event) close() {
	if e != nil && e.f != nil {
		e.f.Close()
		e.f = nil
	}
}

// size is the payload's length: what max_bytes counts.
func (e *event) size() int64 {
	if e.blobName != "" {
		return e.blobSize
	}
	return int64(len(e.Data))
}

// errBlobRead marks an error reading a payload's blob file: the
// payload's fault, not the client's.
var errBlobRead = errors.New("reading blob")

// chunks hands out the buffers a blob is read into, one per writer at a
// time.
var chunks = sync.Pool{New: func() any { b := make([]byte, writeChunk); return &b }}

// pieces calls fn with the payload in order, a piece at a time: Data at
// once, a blob writeChunk bytes at a time from one pooled buffer (fn must
// not keep a piece). With runes, a piece never ends inside a UTF-8
// sequence (but at the end), so that text is escaped exactly as whole.
func (e *event) pieces(runes bool, fn func([]byte)) error {
	if e.f == nil {
		fn(e.Data)
		return nil
	}
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	buf := *bp
	r := io.NewSectionReader(e.f, 0, e.blobSize)
	var total int64
	carry := 0
	for {
		n, err := io.ReadFull(r, buf[carry:])
		total += int64(n)
		n += carry
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if n > 0 {
				fn(buf[:n])
			}
			if total != e.blobSize {
				return fmt.Errorf("%w %s: it ended after %d of its %d bytes", errBlobRead, e.blobName, total, e.blobSize)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w %s: %w", errBlobRead, e.blobName, err)
		}
		cut := n
		if runes {
			cut = runeCut(buf[:n])
		}
		fn(buf[:cut])
		carry = copy(buf, buf[cut:n])
	}
}

// runeCut is where to end a piece of b so that no UTF-8 sequence is cut:
// before a sequence at its end that needs more bytes than b holds.
func runeCut(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax+1; i-- {
		c := b[i]
		if c&0xc0 == 0x80 {
			continue // a continuation byte: look further back
		}
		need := 1
		switch {
		case c >= 0xf0:
			need = 4
		case c >= 0xe0:
			need = 3
		case c >= 0xc0:
			need = 2
		}
		if len(b)-i < need {
			return i
		}
		return len(b)
	}
	return len(b)
}

// kind is how the payload is carried in JSON (see dataKind); a blob is
// read for it, a piece at a time, without being held.
func (e *event) kind() (int, error) {
	if e.f == nil {
		return dataKind(e.Event), nil
	}
	if e.JSON && e.blobSize == 0 {
		return kindNull, nil
	}
	if e.JSON {
		ok, err := events.ValidJSON(io.NewSectionReader(e.f, 0, e.blobSize))
		if err != nil {
			return 0, fmt.Errorf("%w %s: %w", errBlobRead, e.blobName, err)
		}
		if ok {
			return kindJSON, nil
		}
	}
	valid := true
	err := e.pieces(true, func(p []byte) { valid = valid && utf8.Valid(p) })
	if err != nil {
		return 0, err
	}
	if valid {
		return kindText, nil
	}
	return kindBinary, nil
}
