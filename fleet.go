package ipcbus

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/fleet"
	"github.com/ipcbus/caddy-ipcbus/handlers"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// FleetConfig joins this host's bus to a fleet of hosts through NATS
// JetStream: the events of the fleet's sources posted on any host reach
// every Caddy process of every host, in the same order on every host, and
// run-once keys of those sources are taken fleet-wide. One worker of the
// host (elected through the zone) runs the bridge; posts never wait on
// NATS. IPC alerts stay on their host.
type FleetConfig struct {
	// Name is the fleet's name: 1 to 32 letters, digits, '-' or '_'. Every
	// host of a fleet gives the same. Required.
	Name string `json:"name,omitempty"`

	// NATS lists the NATS server URLs. Default: nats://127.0.0.1:4222.
	NATS []string `json:"nats,omitempty"`

	// Node is this host's id in the fleet: 1 to 64 letters, digits, '-' or
	// '_', unique in the fleet. Default: the hostname, other characters
	// replaced by '_'.
	Node string `json:"node,omitempty"`

	// Sources are the event sources that cross hosts: exact names, or
	// prefixes ending in '*'. Default: every source except the reserved
	// ones ("ipcbus", "ipcbus.*" and the sources of ipcbus_forward, Caddy's
	// own events), which stay on their host.
	Sources []string `json:"sources,omitempty"`

	// Creds is a NATS credentials file (JWT and NKey seed).
	Creds string `json:"creds,omitempty"`
	// NKey is a file holding an NKey seed.
	NKey string `json:"nkey,omitempty"`
	// Token is a NATS authentication token.
	Token string `json:"token,omitempty"`
	// User and Password authenticate with a user name and password.
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`

	// TLS configures a TLS connection to NATS.
	TLS *FleetTLS `json:"tls,omitempty"`

	// Replicas of the fleet's stream and buckets (1 to 5), used by the host
	// that creates them. Default: 1.
	Replicas int `json:"replicas,omitempty"`
	// MaxAge bounds how long the stream keeps an event: a host away for
	// longer loses the older ones (counted). Default: 24h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
	// MaxBytes bounds the stream's size. Default: 1GiB.
	MaxBytes int64 `json:"max_bytes,omitempty"`

	// NodeTTL is how long this host's entry in the fleet's nodes bucket
	// lives without renewal: the other hosts see a host whose processes all
	// died leave within it. At least 1s. Default: 15s.
	NodeTTL caddy.Duration `json:"node_ttl,omitempty"`
}

// FleetTLS is the TLS of the NATS connection.
type FleetTLS struct {
	// CA is a PEM file of the CAs that sign the servers' certificates.
	// Default: the system's.
	CA string `json:"ca,omitempty"`
	// Cert and Key are PEM files of a client certificate and its key.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `json:"server_name,omitempty"`
}

// config is the fleet package's configuration of fc.
func (fc *FleetConfig) config(a *App) (fleet.Config, error) {
	c := fleet.Config{
		Name: fc.Name, URLs: fc.NATS, Node: fc.Node, Sources: fc.Sources,
		Exclude: handlers.IsReservedSource,
		Creds:   fc.Creds, NKey: fc.NKey, Token: fc.Token, User: fc.User, Password: fc.Password,
		Replicas: fc.Replicas, MaxAge: time.Duration(fc.MaxAge), MaxBytes: fc.MaxBytes,
		NodeTTL:       time.Duration(fc.NodeTTL),
		UniqueTimeout: time.Duration(a.UniqueTimeout),
		Version:       caddyVersion(),
	}
	if fc.TLS != nil {
		tc, err := fc.TLS.config()
		if err != nil {
			return c, fmt.Errorf("fleet %s: %w", fc.Name, err)
		}
		c.TLS = tc
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, nil
}

func (t *FleetTLS) config() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %s: no PEM certificate in it", t.CA)
		}
		tc.RootCAs = pool
	}
	if (t.Cert == "") != (t.Key == "") {
		return nil, fmt.Errorf("tls: give both cert and key, or neither")
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func caddyVersion() string {
	simple, _ := caddy.Version()
	return simple
}

// startFleet joins the running worker to the configured fleet.
func (a *App) startFleet(z *zone.Zone, bus *events.Bus) (*fleet.Fleet, error) {
	c, err := a.Fleet.config(a)
	if err != nil {
		return nil, err
	}
	c.Logger = a.logger.Named("fleet")
	c.Stats = func() fleet.NodeStats { return nodeStats(z) }
	f, err := fleet.New(c, z, bus)
	if err != nil {
		return nil, err
	}
	f.Start()
	return f, nil
}

// nodeStats are the node's lifecycle counters for its fleet entry.
func nodeStats(z *zone.Zone) fleet.NodeStats {
	n := z.Node()
	st := fleet.NodeStats{Starts: n.WorkerStarts.Load(), Reloads: n.Reloads.Load(), Crashes: n.Crashes.Load()}
	for i := range z.Workers() {
		if z.Worker(i).State.Load() == zone.WorkerLive {
			st.Workers++
		}
	}
	return st
}

// lastWorker reports whether the worker in slot is the zone's only live one.
func lastWorker(z *zone.Zone, slot int) bool {
	for i := range z.Workers() {
		if i != slot && z.Worker(i).State.Load() == zone.WorkerLive {
			return false
		}
	}
	return true
}

// stopFleet ends this worker's part in the fleet; the host's last worker
// removes the host's entry on its way out.
func (a *App) stopFleet() {
	if a.fleet == nil {
		return
	}
	leaving := caddy.Exiting() && lastWorker(a.zone, a.worker.Slot())
	a.fleet.Close(leaving)
	if leaving {
		a.logger.Info("left the fleet", zap.String("fleet", a.Fleet.Name))
	}
	a.fleet = nil
}
