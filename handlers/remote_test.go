package handlers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// TestRemoteEventJSON: an event from another host of the fleet carries its
// node in every JSON form (pages, SSE envelopes), and the streamed encoder
// agrees with EventJSON.
func TestRemoteEventJSON(t *testing.T) {
	for _, node := range []string{"", "web-2"} {
		e := &events.Event{Seq: 9, Source: "chat", Name: "msg", Data: []byte(`{"t":"hi"}`), JSON: true, PID: 42, Generation: 1, Time: time.Unix(1, 0).UTC(), Node: node, StreamSeq: 7}
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		if err := writeEventJSON(w, &event{Event: e}); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		var got EventJSON
		if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("%s: %v", buf.Bytes(), err)
		}
		want, _ := json.Marshal(NewEventJSON(e))
		if got.Node != node || !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("streamed %s, want %s", buf.Bytes(), want)
		}
	}
}

// TestFleetUnavailableStatus: a run-once post refused for want of the
// fleet's key bucket is a 503, not a 500.
func TestFleetUnavailableStatus(t *testing.T) {
	if got := EventStatus(events.ErrUnavailable); got != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", got)
	}
}
