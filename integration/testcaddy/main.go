// Command testcaddy is cmd/caddy plus a test-only events handler,
// events.handlers.ipcbus_test_file, which appends every Caddy event it is
// given to a file as a JSON line ({"pid","name","data"}): the integration
// tests use it to see what reaches Caddy's events handlers. Not for use
// outside the tests.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/ipcbus/caddy-ipcbus"
)

func init() { caddy.RegisterModule(new(FileHandler)) }

// FileHandler appends each event to File, one JSON line per event.
type FileHandler struct {
	// File is the path of the file the events are appended to.
	File string `json:"file,omitempty"`
}

var fileMu sync.Mutex

// CaddyModule returns the Caddy module information.
func (*FileHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.ipcbus_test_file", New: func() caddy.Module { return new(FileHandler) }}
}

// Handle appends the event.
func (h *FileHandler) Handle(_ context.Context, e caddy.Event) error {
	b, err := json.Marshal(map[string]any{"pid": os.Getpid(), "name": e.Name(), "data": e.Data})
	if err != nil {
		return fmt.Errorf("encoding the event: %w", err)
	}
	fileMu.Lock()
	defer fileMu.Unlock()
	f, err := os.OpenFile(h.File, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("opening the events file: %w", err)
	}
	defer f.Close()
	_, err = f.Write(append(b, '\n'))
	return err
}

// UnmarshalCaddyfile reads `ipcbus_test_file <path>`.
func (h *FileHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.Args(&h.File) {
		return d.ArgErr()
	}
	return nil
}

func main() {
	caddycmd.Main()
}

// Interface guards
var (
	_ caddyevents.Handler   = (*FileHandler)(nil)
	_ caddyfile.Unmarshaler = (*FileHandler)(nil)
)
