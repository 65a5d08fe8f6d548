package handlers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Defaults of the WebSocket side of Poll.
const (
	// DefaultPingInterval is how often a WebSocket is pinged.
	DefaultPingInterval = 15 * time.Second
	// wsCloseGrace is how long a WebSocket ended by a stop or a reload
	// is given to take its close frame and answer it before its
	// connection is cut: a reload never waits longer on it.
	wsCloseGrace = time.Second
)

// isWebSocket reports whether the request asks for a WebSocket.
func isWebSocket(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "websocket") {
				return true
			}
		}
	}
	return false
}

// hijackRecorder keeps the connection that the WebSocket library hijacks,
// so that the handler can clear the server's deadlines on it and cut it
// when a closing handshake takes too long.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

// Hijack hijacks the connection of the wrapped writer and keeps it.
func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = c
	return c, brw, err
}

// Unwrap returns the wrapped writer.
func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// wsConn is a WebSocket being served: the library's connection, the
// connection under it (for its write deadline), and whether the client
// was dropped for not reading or not answering.
type wsConn struct {
	*websocket.Conn
	nc      net.Conn
	timeout time.Duration // write_timeout
	dropped atomic.Bool
}

// arm moves the write deadline to write_timeout from now: every write (a
// message, a ping, an answer, the close frame) does it first, as the SSE
// streams' deadlineWriter does, rather than a context and its timer per
// message.
func (c *wsConn) arm() { _ = c.nc.SetWriteDeadline(time.Now().Add(c.timeout)) }

// drop counts the client dropped, once.
func (c *wsConn) drop() {
	if c.dropped.CompareAndSwap(false, true) {
		stats.slowDropped.Add(1)
	}
}

// websocket serves a stream over a WebSocket: one message per event (see
// Poll), pings every ping_interval, and publishing with publish. The
// slot under max_streams is taken before the upgrade.
func (h *Poll) websocket(w http.ResponseWriter, r *http.Request, p feed, envelope bool, since uint64) {
	hw := &hijackRecorder{ResponseWriter: w}
	wc, err := websocket.Accept(hw, r, &websocket.AcceptOptions{OriginPatterns: h.Origins})
	if err != nil {
		h.logger.Debug("refused a websocket", zap.String("remote", r.RemoteAddr), zap.Error(err))
		return // Accept answered
	}
	c := &wsConn{Conn: wc, nc: hw.conn, timeout: time.Duration(h.WriteTimeout)}
	// The server's read and write timeouts count from the request's
	// start and would cut the socket: write_timeout bounds each write
	// instead (arm), and the pings find a client that is gone.
	_ = c.nc.SetDeadline(time.Time{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer c.CloseNow()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if h.Publish {
		c.SetReadLimit(h.limit)
		wg.Go(func() {
			defer cancel()
			h.wsPublish(ctx, c)
		})
	} else {
		ctx = c.CloseRead(ctx) // answers pings and close frames; a data message ends it
	}
	wg.Go(func() { h.wsPing(ctx, c) })
	// A stop cuts a socket that has not closed after the grace: a write
	// blocked on a client that does not read, or a close handshake it
	// does not answer.
	stopCut := context.AfterFunc(h.stopping, func() {
		t := time.AfterFunc(wsCloseGrace, func() { c.nc.Close() })
		context.AfterFunc(ctx, func() { t.Stop() })
	})
	defer stopCut()
	s := &wsSink{h: h, c: c, ctx: ctx, envelope: envelope}
	switch end := h.follow(ctx, p, &since, s, nil, false); end {
	case endStopped, endClosed:
		c.arm()
		reason := "the server is reloading or stopping"
		if end == endClosed {
			reason = "the events bus stopped"
		}
		_ = c.Close(websocket.StatusGoingAway, reason)
	}
	if c.dropped.Load() {
		h.logger.Debug("dropped a websocket client that did not read or answer pings", zap.String("remote", r.RemoteAddr), zap.Duration("write_timeout", time.Duration(h.WriteTimeout)))
	}
}

// wsPing pings the client every ping_interval; a client that does not
// answer within write_timeout is cut.
func (h *Poll) wsPing(ctx context.Context, c *wsConn) {
	t := time.NewTicker(time.Duration(h.PingInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Duration(h.WriteTimeout))
		c.arm()
		err := c.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && h.stopping.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				c.drop()
			}
			c.CloseNow()
			return
		}
	}
}

// wsSink writes a stream as WebSocket messages, each under write_timeout.
type wsSink struct {
	h        *Poll
	c        *wsConn
	ctx      context.Context
	bw       *bufio.Writer // reused for the messages written a piece at a time
	buf      bytes.Buffer  // an envelope in memory, reused
	jw       *bufio.Writer // writes the envelope into buf
	envelope bool
}

// write runs fn under write_timeout (arm): a write blocked past it fails,
// and the client is counted dropped. (A stop cuts the connection after
// wsCloseGrace.)
func (s *wsSink) write(fn func(context.Context) error) error {
	armed := time.Now()
	s.c.arm()
	err := fn(context.Background())
	if err != nil && s.ctx.Err() == nil && s.h.stopping.Err() == nil && time.Since(armed) >= s.c.timeout {
		s.c.drop()
	}
	return err
}

// stream writes one message of type typ with fill, a piece at a time. A
// payload that cannot be read leaves the message cut short: the
// connection is then closed at once, and the error logged.
func (s *wsSink) stream(ev *event, typ websocket.MessageType, fill func(*bufio.Writer) error) error {
	return s.write(func(ctx context.Context) error {
		w, err := s.c.Writer(ctx, typ)
		if err != nil {
			return err
		}
		if s.bw == nil {
			s.bw = bufio.NewWriterSize(w, writeChunk)
		}
		s.bw.Reset(w)
		if err := fill(s.bw); err != nil {
			if errors.Is(err, errBlobRead) {
				s.h.logger.Warn("ending a websocket: an event's payload could not be read", zap.Uint64("seq", ev.Seq), zap.Error(err))
			}
			s.c.CloseNow() // the message cannot be ended right
			return err
		}
		if err := s.bw.Flush(); err != nil {
			return err
		}
		return w.Close()
	})
}

// event writes the payload as posted, in a text message, or a binary one
// when it is neither JSON nor UTF-8 text; with envelope, the event's JSON
// object in a text message. An event in memory goes out as one frame, a
// blob's a piece at a time.
func (s *wsSink) event(ev *event) error {
	typ := websocket.MessageText
	fill := func(bw *bufio.Writer) error { return writeEventJSON(bw, ev) }
	if !s.envelope {
		kind, err := ev.kind()
		if err != nil {
			s.h.logger.Warn("ending a websocket: an event's payload could not be read", zap.Uint64("seq", ev.Seq), zap.Error(err))
			return err
		}
		if kind == kindBinary {
			typ = websocket.MessageBinary
		}
		fill = func(bw *bufio.Writer) error { return ev.pieces(false, func(p []byte) { bw.Write(p) }) }
	}
	if ev.f != nil {
		return s.stream(ev, typ, fill)
	}
	data := ev.Data
	if s.envelope {
		s.buf.Reset()
		if s.jw == nil {
			s.jw = bufio.NewWriterSize(&s.buf, 4<<10)
		}
		s.jw.Reset(&s.buf)
		if err := fill(s.jw); err != nil {
			return err
		}
		s.jw.Flush()
		data = s.buf.Bytes()
	}
	err := s.write(func(ctx context.Context) error { return s.c.Write(ctx, typ, data) })
	if s.buf.Cap() > writeChunk {
		s.buf = bytes.Buffer{} // one large envelope is not kept for the socket's life
	}
	return err
}

// lost writes the notice of events the ring no longer holds, as a text
// message {"event":"ipcbus.lost","data":{"from":SEQ,"count":N,"reason":"overrun"}}.
func (s *wsSink) lost(from, count uint64) error {
	b := []byte(`{"event":"` + NoticeLost + `","data":{"from":`)
	b = strconv.AppendUint(b, from, 10)
	b = append(b, `,"count":`...)
	b = strconv.AppendUint(b, count, 10)
	b = append(b, `,"reason":"overrun"}}`...)
	return s.write(func(ctx context.Context) error { return s.c.Write(ctx, websocket.MessageText, b) })
}

// flush does nothing: every message goes out when it is written.
func (s *wsSink) flush() error { return nil }

// idle does nothing: pings keep a WebSocket alive (wsPing).
func (s *wsSink) idle() error { return nil }
