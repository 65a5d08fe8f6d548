package ipcbus

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricUniqueTableFull: the events' unique_table_full counter is
// exported as caddy_ipcbus_events_unique_table_full_total, a counter.
func TestMetricUniqueTableFull(t *testing.T) {
	var s snapshotForMetrics
	s.report.Events.UniqueTableFull = 3
	s.report.Events.Duplicates = 5
	found := 0
	for _, m := range metricDescs {
		if !strings.Contains(m.desc.String(), `"caddy_ipcbus_events_unique_table_full_total"`) {
			continue
		}
		found++
		if v := m.get(&s); v != 3 {
			t.Fatalf("events_unique_table_full_total = %v, want 3", v)
		}
		if m.kind != prometheus.CounterValue {
			t.Fatal("events_unique_table_full_total is not a counter")
		}
	}
	if found != 1 {
		t.Fatalf("events_unique_table_full_total described %d times, want once", found)
	}
}
