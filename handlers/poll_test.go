package handlers

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/events"
)

func TestWriteSSE(t *testing.T) {
	for _, c := range []struct{ data, want string }{
		{"", "id: 7\nevent: e\ndata: \n\n"},
		{"plain", "id: 7\nevent: e\ndata: plain\n\n"},
		{`{"a": 1}`, "id: 7\nevent: e\ndata: {\"a\": 1}\n\n"},
		{"two\nlines", "id: 7\nevent: e\ndata: two\ndata: lines\n\n"},
		{"crlf\r\nand\rcr\n", "id: 7\nevent: e\ndata: crlf\ndata: and\ndata: cr\ndata: \n\n"},
	} {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		writeSSE(bw, &event{Event: &events.Event{Seq: 7, Name: "e", Data: []byte(c.data)}}, false)
		bw.Flush()
		if b.String() != c.want {
			t.Errorf("%q: %q, want %q", c.data, b.String(), c.want)
		}
	}
}

func TestFilter(t *testing.T) {
	f := filter{sources: []string{"app.*", "chat"}, events: []string{"up", "down"}}
	for _, c := range []struct {
		source, event string
		keep          bool
	}{
		{"chat", "up", true}, {"app.web", "down", true}, {"app.", "up", true}, {"app", "up", false},
		{"chat", "left", false}, {"chatter", "up", false},
	} {
		if got := f.keep(&events.Event{Source: c.source, Name: c.event}); got != c.keep {
			t.Errorf("%s/%s: %v", c.source, c.event, got)
		}
	}
	if !(filter{}).keep(&events.Event{Source: "x", Name: "y"}) {
		t.Error("an empty filter drops events")
	}
	if (filter{none: true}).keep(&events.Event{Source: "x", Name: "y"}) {
		t.Error("a configured filter that came out empty keeps events")
	}
}

func TestDataJSON(t *testing.T) {
	for _, c := range []struct {
		data string
		json bool
		want string
	}{
		{`{"a":1}`, true, `{"a":1}`}, {`{"a":1}`, false, `"{\"a\":1}"`}, {"", true, "null"}, {"text", false, `"text"`},
	} {
		if got := string(DataJSON(&events.Event{Data: []byte(c.data), JSON: c.json})); got != c.want {
			t.Errorf("%q %v: %s", c.data, c.json, got)
		}
	}
}
