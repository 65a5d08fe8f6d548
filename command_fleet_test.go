package ipcbus

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/fleet"
)

func TestWriteFleetTable(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		st   fleet.Status
		want []string
	}{
		{"started", fleet.Status{Name: "prod", Node: "web-1", Stream: "IPCBUS_prod", Connected: true, Server: "nats://10.0.0.5:4222",
			In: fleet.InStatus{Started: true, Applied: 3400, StreamSeq: 4600}, Nodes: []fleet.NodeStatus{{Entry: fleet.Entry{Node: "web-1"}, LastSeen: now}}},
			[]string{"fleet prod  stream IPCBUS_prod  this node web-1, connected to nats://10.0.0.5:4222", "in:  applied 3400  lag 0  lost 0  (stream seq 4600)", "web-1"}},
		{"not started", fleet.Status{Name: "prod", Node: "web-2", Stream: "IPCBUS_prod", NodesError: "not connected to NATS"},
			[]string{"not connected", "in:  not started", "hosts unknown: not connected to NATS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeFleetTable(&b, tc.st, now); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("table lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}
