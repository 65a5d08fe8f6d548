package handlers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// A batch publish to ipcbus_broadcast posts many events in one request:
// an NDJSON body (Content-Type application/x-ndjson: one JSON object a
// line) or a JSON array of them (Content-Type application/json with the
// query parameter batch). Each object is {"source", "event", "data"},
// source and event defaulting to the route's (or the query's), data any
// JSON value: a JSON string is posted as its text, anything else as JSON.
// The events get consecutive sequence numbers, in the body's order; the
// answer is {"first", "last", "count"}. All or nothing: one bad item (a
// name, a reserved source, a payload over max_payload) refuses the whole
// batch (400, naming the item) and posts none. The body is bounded by
// max_size, the items by events.MaxBatch (10,000).

// batchItem is one object of a batch body.
type batchItem struct {
	Source string          `json:"source"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
}

// isBatch reports whether r is a batch publish.
func isBatch(r *http.Request) bool {
	if mt := mediaType(r); mt == "application/x-ndjson" || mt == "application/jsonl" {
		return true
	}
	return queryHas(r.URL.RawQuery, "batch") && isJSON(r)
}

// postBatch answers a batch publish.
func (h *Broadcast) postBatch(w http.ResponseWriter, r *http.Request) (first, last uint64, count int, herr *Error) {
	bus := h.app.Bus()
	if bus == nil {
		answerEarly(w, r)
		return 0, 0, 0, httpErr(http.StatusServiceUnavailable, errNotRunning)
	}
	if value(r, h.Unique, "unique") != "" {
		answerEarly(w, r)
		return 0, 0, 0, httpErr(http.StatusBadRequest, errors.New("a batch cannot carry a unique key: post run-once events one at a time"))
	}
	defSource, defEvent := value(r, h.Source, "source"), value(r, h.Event, "event")
	body, herr := ReadBody(w, r, h.limit)
	if herr != nil {
		return 0, 0, 0, herr
	}
	raw, err := splitBatch(body, isJSON(r))
	if err != nil {
		return 0, 0, 0, httpErr(http.StatusBadRequest, err)
	}
	items := make([]events.BatchItem, len(raw))
	for i, it := range raw {
		if it.Source == "" {
			it.Source = defSource
		}
		if it.Event == "" {
			it.Event = defEvent
		}
		if err := checkPublish(it.Source, it.Event, true); err != nil {
			return 0, 0, 0, httpErr(http.StatusBadRequest, fmt.Errorf("event %d: %w", i, err))
		}
		var data any = nil
		if len(it.Data) > 0 && !bytes.Equal(it.Data, []byte("null")) {
			var s string
			if it.Data[0] == '"' && json.Unmarshal(it.Data, &s) == nil {
				data = s
			} else {
				data = it.Data
			}
		}
		items[i] = events.BatchItem{Source: it.Source, Event: it.Event, Data: data}
	}
	first, last, err = bus.PostBatch(items)
	if err != nil {
		return 0, 0, 0, PostError(w, h.app, err)
	}
	return first, last, len(items), nil
}

var errBatchTooLarge = fmt.Errorf("the batch has more than %d events, the limit is %d", events.MaxBatch, events.MaxBatch)

// splitBatch parses a batch body: a JSON array, or NDJSON. It stops at
// the event past events.MaxBatch, so that a body of many tiny items costs
// no more than the batch it may carry.
func splitBatch(body []byte, array bool) ([]batchItem, error) {
	var items []batchItem
	if array {
		notArray := func(err error) error {
			return fmt.Errorf("the batch is not a JSON array of {\"source\",\"event\",\"data\"} objects: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		if tok, err := dec.Token(); err != nil {
			return nil, notArray(err)
		} else if tok != json.Delim('[') {
			return nil, notArray(fmt.Errorf("it starts with %v", tok))
		}
		for dec.More() {
			if len(items) == events.MaxBatch {
				return nil, errBatchTooLarge
			}
			var it batchItem
			if err := dec.Decode(&it); err != nil {
				return nil, notArray(fmt.Errorf("event %d: %w", len(items), err))
			}
			items = append(items, it)
		}
		if _, err := dec.Token(); err != nil { // the closing bracket
			return nil, notArray(err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, notArray(errors.New("something follows the array"))
		}
	} else {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, len(body)+1)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			if len(items) == events.MaxBatch {
				return nil, errBatchTooLarge
			}
			var it batchItem
			if err := json.Unmarshal(line, &it); err != nil {
				return nil, fmt.Errorf("line %d of the batch is not a {\"source\",\"event\",\"data\"} JSON object: %w", n, err)
			}
			items = append(items, it)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading the batch: %w", err)
		}
	}
	if len(items) == 0 {
		return nil, errors.New("the batch is empty")
	}
	return items, nil
}
