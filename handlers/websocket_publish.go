package handlers

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/coder/websocket"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// wsPublishFrame is a text message a client sends on a WebSocket of a
// route with publish, to post an event as ipcbus_broadcast does.
type wsPublishFrame struct {
	// Source and Event of the event (required; the reserved ones are
	// refused).
	Source string `json:"source"`
	Event  string `json:"event"`
	// Data is the payload: a JSON string is posted as its text (or, with
	// DataEncoding "base64", as the bytes it encodes), any other JSON
	// value as JSON.
	Data json.RawMessage `json:"data"`
	// DataEncoding is "base64" for a Data string that is base64.
	DataEncoding string `json:"data_encoding,omitempty"`
	// Unique makes the event run-once under this key.
	Unique string `json:"unique,omitempty"`
	// ID is given back in the answer, to match it with its frame.
	ID json.RawMessage `json:"id,omitempty"`
}

// wsPublish reads the client's messages, posts each, and answers each with
// a text message {"seq":N} or {"error":"…","status":CODE} (with "id" if the
// frame had one). A message over max_size ends the socket with close
// status 1009 (the read limit).
func (h *Poll) wsPublish(ctx context.Context, c *wsConn) {
	for {
		typ, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		answer := h.publishFrame(typ, b)
		c.arm()
		if err := c.Write(ctx, websocket.MessageText, answer); err != nil {
			return
		}
	}
}

// publishFrame posts the event of one message and returns the answer.
func (h *Poll) publishFrame(typ websocket.MessageType, b []byte) []byte {
	var f wsPublishFrame
	seq, herr := h.postFrame(typ, b, &f)
	var out []byte
	if herr != nil {
		out = append([]byte(`{"error":`), appendJSONString(nil, herr.Err.Error())...)
		out = append(out, `,"status":`...)
		out = strconv.AppendInt(out, int64(herr.Status), 10)
	} else {
		out = strconv.AppendUint([]byte(`{"seq":`), seq, 10)
	}
	if len(f.ID) > 0 {
		out = append(out, `,"id":`...)
		out = append(out, f.ID...)
	}
	return append(out, '}')
}

func (h *Poll) postFrame(typ websocket.MessageType, b []byte, f *wsPublishFrame) (uint64, *Error) {
	if typ != websocket.MessageText {
		return 0, httpErr(http.StatusBadRequest, errors.New(`binary messages are not posted: send a text message {"source","event","data"} (binary data in base64 with "data_encoding":"base64")`))
	}
	if err := json.Unmarshal(b, f); err != nil {
		f.ID = nil // it may not be JSON
		return 0, httpErr(http.StatusBadRequest, fmt.Errorf("a message to post is a JSON object {\"source\",\"event\",\"data\"}: %w", err))
	}
	if len(f.ID) > 0 && !json.Valid(f.ID) {
		f.ID = nil
	}
	for _, c := range []struct{ what, v string }{{"source", f.Source}, {"event", f.Event}} {
		if err := checkName(c.what, c.v); err != nil {
			return 0, httpErr(http.StatusBadRequest, err)
		}
	}
	if f.Unique != "" {
		if err := checkName("unique key", f.Unique); err != nil {
			return 0, httpErr(http.StatusBadRequest, err)
		}
	}
	if err := checkPublish(f.Source, f.Event, true); err != nil {
		return 0, httpErr(http.StatusBadRequest, err)
	}
	bus := h.app.Bus()
	if bus == nil {
		return 0, httpErr(http.StatusServiceUnavailable, errNotRunning)
	}
	var opts []events.PostOption
	if f.Unique != "" {
		opts = append(opts, events.Unique(f.Unique))
	}
	data, err := frameData(f)
	if err != nil {
		return 0, httpErr(http.StatusBadRequest, err)
	}
	if data.json {
		opts = append(opts, events.AsJSON())
	}
	seq, err := bus.Post(f.Source, f.Event, data.b, opts...)
	if err != nil {
		return 0, httpErr(EventStatus(err), err)
	}
	return seq, nil
}

// framePayload is the payload of a publish frame and whether it is JSON.
type framePayload struct {
	b    []byte
	json bool
}

// frameData decodes a publish frame's data: a string as its text (or the
// bytes of its base64), any other JSON value as JSON, none as JSON null.
func frameData(f *wsPublishFrame) (framePayload, error) {
	d := bytes.TrimSpace(f.Data)
	if len(d) == 0 || d[0] != '"' {
		if f.DataEncoding != "" {
			return framePayload{}, fmt.Errorf("data_encoding %q needs data to be a string", f.DataEncoding)
		}
		if len(d) == 0 {
			d = []byte("null")
		}
		return framePayload{b: d, json: true}, nil
	}
	var s string
	if err := json.Unmarshal(d, &s); err != nil {
		return framePayload{}, fmt.Errorf("data: %w", err)
	}
	switch f.DataEncoding {
	case "":
		return framePayload{b: []byte(s)}, nil
	case EncodingBase64:
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return framePayload{}, fmt.Errorf("data is not standard base64: %w", err)
		}
		return framePayload{b: b}, nil
	}
	return framePayload{}, fmt.Errorf("data_encoding %q: the only encoding is %q", f.DataEncoding, EncodingBase64)
}
