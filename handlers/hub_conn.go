package handlers

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// aLongTimeAgo is a deadline in the past: it makes a blocked read or
// write of a connection return at once.
var aLongTimeAgo = time.Unix(1, 0)

// sharedWriters reports whether the stream of r may go to the hub: an
// HTTP/1.1 request without TLS, on a handler whose writers are on. (The
// response is checked too, once its headers are out: hijackable.)
func (h *Poll) sharedWriters(r *http.Request, p feed) bool {
	rd, ok := p.(reader)
	return ok && rd.cache != nil && h.StreamWriters >= 0 && r.TLS == nil && r.ProtoMajor == 1 && r.ProtoMinor >= 1
}

// hijackable reports whether the response's body, its headers out, goes
// to the connection in chunks as written: nothing in front compresses it,
// gave it a length, or holds it in a buffer.
func hijackable(w http.ResponseWriter) bool {
	hd := w.Header()
	if hd.Get("Content-Encoding") != "" || hd.Get("Content-Length") != "" || hd.Get("Transfer-Encoding") != "" {
		return false
	}
	for i := 0; w != nil && i < 32; i++ {
		if b, ok := w.(interface{ Buffered() bool }); ok && b.Buffered() {
			return false
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	return true
}

// streamConn serves a stream on its hijacked HTTP/1.1 connection, whose
// response headers (chunked) are out: its own goroutine writes it until
// it has caught up, then the hub does, until the hub hands it back (a full
// socket, an event it cannot write) or the stream ends.
func (h *Poll) streamConn(hc net.Conn, p reader, since uint64) {
	c, raw := rawConn(hc)
	defer c.Close()
	// A stop ends a read or a write in progress, and every later one,
	// until the stream is done with the connection.
	var pokeMu sync.Mutex
	finished := false
	stopPoke := context.AfterFunc(h.stopping, func() {
		pokeMu.Lock()
		defer pokeMu.Unlock()
		if !finished {
			_ = c.SetDeadline(aLongTimeAgo)
		}
	})
	defer stopPoke()
	cw := &connWriter{c: c, timeout: time.Duration(h.WriteTimeout), stopping: h.stopping}
	sink := &sseSink{h: h, bw: bufio.NewWriterSize(cw, 4<<10), dw: cw, envelope: h.Envelope}
	s := &hubStream{raw: raw, keep: p.keep, poke: func() { _ = c.SetReadDeadline(aLongTimeAgo) }}
	// The client's going away shows as a failed write, or as the end of
	// the read that waits while the hub writes, or (without the hub) as
	// the end of watchClient's read.
	ctx := context.Background()
	var pending []byte // the rest of a chunk the hub began, when the stream ends
	var end endReason
	for {
		if raw == nil {
			var cancel func()
			ctx, cancel = watchClient(c)
			keep := time.NewTicker(time.Duration(h.KeepAlive))
			end = h.follow(ctx, p, &since, sink, keep.C, false)
			keep.Stop()
			cancel()
			break
		}
		if end = h.follow(ctx, p, &since, sink, nil, true); end != endIdle {
			break
		}
		// The hub writes without waiting: no deadline may be left for it.
		if cw.clear() != nil {
			end = endClient
			break
		}
		s.since = since
		if !h.hub.join(h, s, p.bus) {
			if h.stopping.Err() != nil {
				end = endStopped
				break
			}
			if p.closed() {
				end = endClosed
				break
			}
			raw = nil // the hub's writers ended with another bus: write it here
			continue
		}
		end = s.wait(h, c)
		if end == endClient {
			break
		}
		since = s.since
		if end == endStopped {
			pending = s.out
			break
		}
		if len(s.out) > 0 && cw.writeRaw(s.out) != nil || s.err != nil {
			end = endClient
			break
		}
	}
	if end == endClient && h.stopping.Err() != nil && cw.endable() {
		end = endStopped
	}
	if cw.dropped() {
		h.logger.Debug("dropped a stream client that did not read", zap.String("remote", c.RemoteAddr().String()), zap.Duration("write_timeout", time.Duration(h.WriteTimeout)))
	}
	pokeMu.Lock()
	finished = true
	pokeMu.Unlock()
	if (end == endStopped || end == endClosed) && cw.endable() {
		// The end of the chunked body, after the rest of a chunk the hub
		// began, if the socket takes it now: the client sees a clean end,
		// and reconnects.
		_ = c.SetDeadline(time.Time{})
		last := append(pending, "0\r\n\r\n"...)
		if raw != nil {
			_, _ = writeNow(raw, last)
		} else {
			_ = c.SetWriteDeadline(time.Now().Add(stopEndGrace))
			_, _ = c.Write(last)
		}
	}
}

// watchClient returns a context cancelled when the client closes c (or
// sends something: a client has nothing to say on a stream), and the
// function that stops watching. It is for a stream that no hub reads.
func watchClient(c net.Conn) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [1]byte
		_, _ = c.Read(b[:])
		cancel()
	}()
	return ctx, func() {
		cancel()
		_ = c.SetReadDeadline(aLongTimeAgo)
		<-done
	}
}

// wait waits, while the hub writes s, for the hub to hand it back
// (endIdle: s.since, s.out and s.err say where it is), for the client to
// go away (endClient), or for Caddy to stop (endStopped; s.out may hold
// the rest of a chunk).
func (s *hubStream) wait(h *Poll, c net.Conn) endReason {
	var buf [512]byte
	for {
		_, err := c.Read(buf[:])
		if err == nil {
			continue // a client has nothing to say on a stream: what it sends is ignored
		}
		st := s.leave(h)
		if st == handedBack && isTimeout(err) {
			_ = c.SetReadDeadline(time.Time{})
		}
		switch {
		case h.stopping.Err() != nil:
			if st != handedBack {
				s.out = nil // the hub wrote whole chunks
			}
			return endStopped
		case st == handedBack && isTimeout(err):
			return endIdle
		default:
			return endClient
		}
	}
}

// leave takes s out of the hub if it is in it, and returns the state it
// was in.
func (s *hubStream) leave(h *Poll) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if st == inHub {
		s.state = left
		stats.shared.Add(-1)
		h.hub.n.Add(-1)
	}
	return st
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// rawConn is the connection to write, and its raw form for writes that do
// not wait (nil when there is none: the stream's goroutine writes it all).
// Caddy's own wrappers, which pass writes through, are looked through.
func rawConn(c net.Conn) (net.Conn, syscall.RawConn) {
	for range 4 {
		switch t := c.(type) {
		case *net.TCPConn:
			if raw, err := t.SyscallConn(); err == nil {
				return c, raw
			}
			return c, nil
		case *net.UnixConn:
			if raw, err := t.SyscallConn(); err == nil {
				return c, raw
			}
			return c, nil
		}
		// Caddy's wrappers that pass writes through as they are: its
		// record of a hijacked connection (it counts bytes for the access
		// log), and the one that looks for an h2c preface on a server
		// without h2c.
		v := reflect.ValueOf(c)
		if v.Kind() != reflect.Pointer || v.IsNil() {
			return c, nil
		}
		if t := v.Type().String(); t != "*caddyhttp.hijackedConn" && t != "*caddyhttp.http2Conn" {
			return c, nil
		}
		inner, ok := v.Elem().FieldByName("Conn").Interface().(net.Conn)
		if !ok || inner == nil {
			return c, nil
		}
		c = inner
	}
	return c, nil
}

// connWriter writes a hijacked HTTP/1.1 response body as chunks, one per
// Write, under the same write deadline as deadlineWriter: a client that
// takes nothing for write_timeout (and up to an eighth more) is dropped.
type connWriter struct {
	c        net.Conn
	timeout  time.Duration
	stopping context.Context
	deadline time.Time // the one set last (zero: none)
	err      error
	one      []byte // a chunk in one piece, for a connection without writev
}

func (w *connWriter) arm() {
	now := time.Now()
	if !w.deadline.IsZero() && w.deadline.Sub(now) >= w.timeout {
		return
	}
	w.deadline = now.Add(w.timeout + w.timeout/8)
	_ = w.c.SetWriteDeadline(w.deadline)
	if w.stopping.Err() != nil { // the stop's poke may have come before the line above
		_ = w.c.SetWriteDeadline(aLongTimeAgo)
	}
}

// clear removes the write deadline.
func (w *connWriter) clear() error {
	if w.err != nil {
		return w.err
	}
	if !w.deadline.IsZero() {
		w.deadline = time.Time{}
		_ = w.c.SetWriteDeadline(time.Time{})
	}
	if w.stopping.Err() != nil {
		w.err = errStoppedClean
	}
	return w.err
}

// errStoppedClean is a connWriter's error after a stop that cut no
// chunk: the body can still end cleanly.
var errStoppedClean = errors.New("stopped between chunks")

// Write writes p as chunks of at most writeChunk bytes, each in one write
// (writev on TCP): a stop that comes between two writes leaves no chunk
// cut, and the body ends cleanly.
func (w *connWriter) Write(p []byte) (int, error) {
	written := 0
	_, vectored := w.c.(*net.TCPConn)
	for len(p) > 0 && w.err == nil {
		part := p[:min(len(p), writeChunk)]
		var hb [chunkHead]byte
		head := append(strconv.AppendUint(hb[:0], uint64(len(part)), 16), '\r', '\n')
		w.arm()
		var n int64
		var err error
		if vectored {
			bufs := net.Buffers{head, part, []byte("\r\n")}
			n, err = bufs.WriteTo(w.c)
		} else {
			w.one = append(append(append(w.one[:0], head...), part...), '\r', '\n')
			var m int
			m, err = w.c.Write(w.one)
			n = int64(m)
		}
		if err != nil {
			w.err = err
			if n == 0 && w.stopping.Err() != nil {
				w.err = errStoppedClean
			}
			break
		}
		written += len(part)
		p = p[len(part):]
	}
	return written, w.err
}

// endable reports whether the body can still end cleanly: nothing failed,
// or a stop came between two chunks.
func (w *connWriter) endable() bool { return w.err == nil || w.err == errStoppedClean }

// writeRaw writes b as it is (the rest of chunks the hub began).
func (w *connWriter) writeRaw(b []byte) error {
	for len(b) > 0 && w.err == nil {
		part := b[:min(len(b), writeChunk)]
		w.arm()
		if _, err := w.c.Write(part); err != nil {
			w.err = err
		}
		b = b[len(part):]
	}
	return w.err
}

// Flush has nothing to do: every Write is sent.
func (w *connWriter) Flush() error { return w.err }

// dropped reports (and counts) a write that failed because the client did
// not read, as deadlineWriter.dropped.
func (w *connWriter) dropped() bool {
	if w.err == nil || w.stopping.Err() != nil || !isTimeout(w.err) {
		return false
	}
	stats.slowDropped.Add(1)
	return true
}
