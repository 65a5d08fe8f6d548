package ipcbus

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipcbus/caddy-ipcbus/workermgr"
)

// collector exposes the node's counters (from the zone) and this
// process's counters as Prometheus metrics, read at scrape time from the
// running app: nothing is added to the hot paths. One collector serves
// every config load; it is registered into each load's registry.
type collector struct{}

var metricsCollector = collector{}

type metricDesc struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	get  func(s *snapshotForMetrics) float64
}

type snapshotForMetrics struct {
	node      workermgr.NodeInfo
	live      int
	report    StatsReport
	hasProc   bool
	blobBytes int64
	blobQuota int64
}

func counter(name, help string, get func(s *snapshotForMetrics) float64) metricDesc {
	return metricDesc{prometheus.NewDesc("caddy_ipcbus_"+name, help, nil, nil), prometheus.CounterValue, get}
}

func gauge(name, help string, get func(s *snapshotForMetrics) float64) metricDesc {
	return metricDesc{prometheus.NewDesc("caddy_ipcbus_"+name, help, nil, nil), prometheus.GaugeValue, get}
}

var metricDescs = []metricDesc{
	counter("node_starts_total", "Node starts (a worker joining a zone with no live worker).", func(s *snapshotForMetrics) float64 { return float64(s.node.Starts) }),
	counter("worker_starts_total", "Workers that joined the node.", func(s *snapshotForMetrics) float64 { return float64(s.node.WorkerStarts) }),
	counter("reloads_total", "Workers that joined while an older worker of their process lived.", func(s *snapshotForMetrics) float64 { return float64(s.node.Reloads) }),
	counter("worker_exits_total", "Clean worker exits.", func(s *snapshotForMetrics) float64 { return float64(s.node.Exits) }),
	counter("worker_crashes_total", "Workers found dead without having left.", func(s *snapshotForMetrics) float64 { return float64(s.node.Crashes) }),
	counter("missed_heartbeats_total", "Workers found alive but silent for longer than dead_after.", func(s *snapshotForMetrics) float64 { return float64(s.node.MissedHeartbeats) }),
	counter("ring_gaps_total", "Ring records abandoned because their writer never committed them.", func(s *snapshotForMetrics) float64 { return float64(s.node.RingGaps) }),
	counter("ring_segments_reclaimed_total", "Ring segments taken back from writer processes that died holding them.", func(s *snapshotForMetrics) float64 { return float64(s.node.SegmentsReclaimed) }),
	counter("alerts_discarded_total", "Alerts addressed to crashed workers that they never read.", func(s *snapshotForMetrics) float64 { return float64(s.node.AlertsDiscarded) }),
	gauge("live_workers", "Live workers of the node.", func(s *snapshotForMetrics) float64 { return float64(s.live) }),
	gauge("ring_tail", "The next ring sequence number.", func(s *snapshotForMetrics) float64 { return float64(s.report.Ring.Tail) }),
	counter("events_posted_total", "Events this process posted.", func(s *snapshotForMetrics) float64 { return float64(s.report.Events.Posted) }),
	counter("events_delivered_total", "Events this process's workers handled.", func(s *snapshotForMetrics) float64 { return float64(s.report.Events.Delivered) }),
	counter("events_lost_total", "Events this process's workers lost (overrun or gap).", func(s *snapshotForMetrics) float64 {
		return float64(s.report.Events.LostOverrun + s.report.Events.LostGap)
	}),
	counter("events_duplicates_total", "Unique posts refused as duplicates.", func(s *snapshotForMetrics) float64 { return float64(s.report.Events.Duplicates) }),
	counter("events_unique_table_full_total", "Unique posts refused because the zone's run-once key table was full.", func(s *snapshotForMetrics) float64 {
		return float64(s.report.Events.UniqueTableFull)
	}),
	counter("handler_panics_total", "Event handler panics recovered.", func(s *snapshotForMetrics) float64 { return float64(s.report.Events.HandlerPanics) }),
	counter("alerts_sent_total", "Alerts this process sent (Send and Broadcast).", func(s *snapshotForMetrics) float64 {
		return float64(s.report.Alerts.Sent + s.report.Alerts.Broadcasts)
	}),
	counter("alerts_received_total", "Alerts this process's workers received.", func(s *snapshotForMetrics) float64 { return float64(s.report.Alerts.Received) }),
	counter("alerts_dropped_total", "Alerts dropped because a receiver lagged (drop policy).", func(s *snapshotForMetrics) float64 { return float64(s.report.Alerts.Dropped) }),
	counter("alert_bytes_sent_total", "Alert data bytes this process sent.", func(s *snapshotForMetrics) float64 { return float64(s.report.Alerts.BytesSent) }),
	counter("blob_quota_exceeded_total", "Posts and sends of this process refused because their payload would have taken the zone's blob files over blob_quota.", func(s *snapshotForMetrics) float64 {
		return float64(s.report.Events.BlobQuotaExceeded + s.report.Alerts.BlobQuotaExceeded)
	}),
	gauge("blob_bytes", "Bytes the zone's blob files hold, node-wide.", func(s *snapshotForMetrics) float64 { return float64(s.blobBytes) }),
	gauge("blob_quota_bytes", "The blob quota this process checks (blob_quota).", func(s *snapshotForMetrics) float64 { return float64(s.blobQuota) }),
	gauge("http_open_streams", "Long-polls and streams of ipcbus_poll open in this process.", func(s *snapshotForMetrics) float64 { return float64(s.report.HTTP.OpenStreams) }),
	gauge("http_shared_streams", "Streams of ipcbus_poll written by the shared stream writers now.", func(s *snapshotForMetrics) float64 { return float64(s.report.HTTP.SharedStreams) }),
	counter("http_inline_passes_total", "Passes over a small shared writer's streams made by the goroutine that learnt of the event.", func(s *snapshotForMetrics) float64 {
		return float64(s.report.HTTP.InlinePasses)
	}),
	counter("http_streams_refused_total", "Polls and streams answered 503 for max_streams or the process-wide cap.", func(s *snapshotForMetrics) float64 {
		return float64(s.report.HTTP.StreamsRefused)
	}),
	counter("http_slow_clients_dropped_total", "Streams and long-polls ended because the client did not read for write_timeout.", func(s *snapshotForMetrics) float64 {
		return float64(s.report.HTTP.SlowClientsDropped)
	}),
	counter("http_bodies_too_large_total", "Request bodies refused with 413 (max_size, admin limit).", func(s *snapshotForMetrics) float64 {
		return float64(s.report.HTTP.BodiesTooLarge)
	}),
}

// Describe sends the descriptions of the metrics.
func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range metricDescs {
		ch <- m.desc
	}
}

// Collect reads the running app, if any.
func (collector) Collect(ch chan<- prometheus.Metric) {
	a := current()
	if a == nil {
		return
	}
	a.mu.Lock()
	if a.worker == nil {
		a.mu.Unlock()
		return
	}
	var s snapshotForMetrics
	var workers []workermgr.WorkerInfo
	s.node, workers = workermgr.Snapshot(a.zone)
	s.report = a.statsLocked()
	s.blobBytes, s.blobQuota = a.zone.BlobUsage(), a.zone.BlobQuota()
	a.mu.Unlock()
	for _, w := range workers {
		if w.State == "live" {
			s.live++
		}
	}
	for _, m := range metricDescs {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.get(&s))
	}
}

// registerMetrics adds the collector to a config load's registry.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metricsCollector, fleetCollector{}} {
		err := reg.Register(c)
		var are prometheus.AlreadyRegisteredError
		if err != nil && !errors.As(err, &are) {
			return err
		}
	}
	return nil
}
