package ipcbus

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// TestForwardNeverBlocks: with its queue full, the forwarder drops and
// counts instead of blocking the goroutine that emitted the event.
func TestForwardNeverBlocks(t *testing.T) {
	f := &Forward{Source: "caddy", QueueSize: 2, q: make(chan forwarded, 2), logger: zap.NewNop()}
	for i := 0; i < 5; i++ {
		ev, _ := caddy.NewEvent(caddy.Context{Context: context.Background()}, "cert_obtained", map[string]any{"identifier": "example.com", "n": i})
		if err := f.Handle(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if f.Dropped() != 3 || len(f.q) != 2 {
		t.Fatalf("dropped %d, queued %d", f.Dropped(), len(f.q))
	}
	first := <-f.q
	var body struct {
		ID   string         `json:"id"`
		Data map[string]any `json:"data"`
	}
	if first.name != "cert_obtained" || json.Unmarshal(first.body, &body) != nil || body.Data["identifier"] != "example.com" || body.ID == "" {
		t.Fatalf("forwarded %s %s", first.name, first.body)
	}
	// Data that cannot be encoded is replaced by an error, never dropped silently.
	bad, _ := caddy.NewEvent(caddy.Context{Context: context.Background()}, "x", map[string]any{"f": func() {}})
	<-f.q
	f.Handle(context.Background(), bad)
	if got := <-f.q; !json.Valid(got.body) {
		t.Fatalf("unencodable data forwarded as %s", got.body)
	}
}

// TestForwardDefaults: the documented defaults of ipcbus_forward, a source
// of "caddy" and a queue of 1,024 events.
func TestForwardDefaults(t *testing.T) {
	f := new(Forward)
	f.setDefaults()
	if f.Source != "caddy" || f.QueueSize != 1024 {
		t.Fatalf("source %q, queue %d; the README documents caddy and 1024", f.Source, f.QueueSize)
	}
}
