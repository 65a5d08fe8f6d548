package ipcbus

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipcbus/caddy-ipcbus/fleet"
)

// fleetStatusTimeout bounds the NATS reads of GET /ipcbus/fleet.
const fleetStatusTimeout = 3 * time.Second

// runningFleet is the running app's fleet part, or an API error.
func runningFleet() (*fleet.Fleet, error) {
	a := current()
	if a == nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errNotRunning}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.worker == nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errNotRunning}
	}
	if a.fleet == nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("no fleet is configured: add fleet <name> to the ipcbus global option")}
	}
	return a.fleet, nil
}

// handleFleet answers GET /ipcbus/fleet: the fleet as this host sees it
// (fleet.Status), the hosts read from NATS now.
func handleFleet(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("method not allowed: use GET")}
	}
	f, err := runningFleet()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), fleetStatusTimeout)
	defer cancel()
	return writeJSON(w, f.Status(ctx))
}

// fleetCollector exposes the fleet's counters, read from the zone at
// scrape time, when a fleet is configured.
type fleetCollector struct{}

var fleetMetrics = []struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	get  func(s *fleet.Status, bridging bool) float64
}{
	{fleetDesc("published_total", "Events of this host published to the fleet and acknowledged."), prometheus.CounterValue, func(s *fleet.Status, _ bool) float64 { return float64(s.Out.Published) }},
	{fleetDesc("out_pending", "Publishes to the fleet awaiting their acknowledgement."), prometheus.GaugeValue, func(s *fleet.Status, _ bool) float64 { return float64(s.Out.Pending) }},
	{fleetDesc("out_lost_total", "Ring records overrun before the bridge published them."), prometheus.CounterValue, func(s *fleet.Status, _ bool) float64 { return float64(s.Out.Lost) }},
	{fleetDesc("out_too_large_total", "Events over the NATS max_payload left on this host (counted by this process)."), prometheus.CounterValue, func(s *fleet.Status, _ bool) float64 { return float64(s.Out.TooLarge) }},
	{fleetDesc("applied_total", "Events of other hosts posted on this host."), prometheus.CounterValue, func(s *fleet.Status, _ bool) float64 { return float64(s.In.Applied) }},
	{fleetDesc("in_lag", "Fleet stream messages not yet applied on this host, as last seen."), prometheus.GaugeValue, func(s *fleet.Status, _ bool) float64 { return float64(s.In.Lag) }},
	{fleetDesc("in_lost_total", "Fleet stream messages dropped by the stream before this host applied them."), prometheus.CounterValue, func(s *fleet.Status, _ bool) float64 { return float64(s.In.Lost) }},
	{fleetDesc("in_started", "1 once this host has its place in the fleet's stream (0 while its first bridge has not reached it)."), prometheus.GaugeValue, func(s *fleet.Status, _ bool) float64 { return b2f(s.In.Started) }},
	{fleetDesc("connected", "1 while this process is connected to NATS."), prometheus.GaugeValue, func(s *fleet.Status, _ bool) float64 { return b2f(s.Connected) }},
	{fleetDesc("bridge", "1 while this process runs the host's bridge."), prometheus.GaugeValue, func(_ *fleet.Status, b bool) float64 { return b2f(b) }},
}

func fleetDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("caddy_ipcbus_fleet_"+name, help, nil, nil)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Describe sends the descriptions of the metrics.
func (fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range fleetMetrics {
		ch <- m.desc
	}
}

// Collect reads the running app's fleet counters (no NATS request).
func (fleetCollector) Collect(ch chan<- prometheus.Metric) {
	f, err := runningFleet()
	if err != nil {
		return
	}
	st := f.Counters()
	for _, m := range fleetMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.get(&st, f.Bridging()))
	}
}
