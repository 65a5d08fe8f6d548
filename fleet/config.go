// Package fleet bridges the events bus of a host (a zone) to the other hosts
// of a fleet through NATS JetStream. One worker of the host, elected by a
// lease in the zone, is the bridge: it publishes the events posted on this
// host to the fleet's stream, de-duplicated by message id, and posts the
// other hosts' events into the local ring in the stream's order, exactly
// once. Run-once keys of fleet sources are taken fleet-wide in a key-value
// bucket, and hosts joining and leaving become events on every host's bus.
// It knows nothing of Caddy.
package fleet

import (
	"crypto/tls"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// Defaults.
const (
	// DefaultURL is the NATS server used when none is configured.
	DefaultURL = "nats://127.0.0.1:4222"
	// DefaultNodeTTL is how long a host's entry in the nodes bucket lives
	// without being renewed: a host whose processes all stopped is seen
	// as gone (node_left) within it.
	DefaultNodeTTL = 15 * time.Second
	// DefaultTakeover is how long a bridge may be silent before another
	// worker of the host takes its lease.
	DefaultTakeover = 750 * time.Millisecond
	// DefaultMaxAge and DefaultMaxBytes bound the fleet's stream unless
	// configured: a host away for longer loses what the stream dropped,
	// counted exactly.
	DefaultMaxAge   = 24 * time.Hour
	DefaultMaxBytes = 1 << 30
	// DefaultMaxInflight bounds the publishes awaiting their ack (and 64 MiB
	// bounds their bytes).
	DefaultMaxInflight = 16384
)

// Names of the fleet's own events, posted on every host's bus under the
// source events.Source ("ipcbus"), which never leaves its host.
const (
	// EventNodeJoined is posted when another host joins the fleet.
	EventNodeJoined = "node_joined"
	// EventNodeLeft is posted when another host left it (its entry was
	// removed or not renewed within the node TTL).
	EventNodeLeft = "node_left"
	// EventLost is posted when events were lost on their way: the ring
	// overran the outbound cursor, or the stream dropped messages this
	// host had not applied. Its data is {"direction","count"}.
	EventLost = "fleet_lost"
)

// Config configures a host's part in a fleet.
type Config struct {
	// Name is the fleet's name: 1 to 32 letters, digits, '-' or '_'. The
	// stream is IPCBUS_<name>, its subjects ipcbus.<name>.>.
	Name string
	// URLs are the NATS servers to connect to (DefaultURL if none).
	URLs []string
	// Node is this host's id in the fleet: 1 to 64 letters, digits, '-'
	// or '_'. Default: the hostname, other characters replaced by '_'.
	Node string
	// Sources are the event sources that cross hosts: exact names or
	// prefixes ending in '*'. None means every source Exclude does not
	// exclude. The bus's own source ("ipcbus") never crosses.
	Sources []string
	// Exclude tells the sources left on the host when Sources is empty
	// (the Caddy app passes its reserved sources).
	Exclude func(source string) bool

	// Auth, as NATS users know it; at most one of Creds, NKey, Token or User.
	Creds    string // a credentials file (JWT and NKey seed)
	NKey     string // an NKey seed file
	Token    string
	User     string
	Password string
	// TLS, when set, is used for the connection.
	TLS *tls.Config

	// Stream settings, used when this host creates the stream (the first
	// host to start does; later ones use it as it is).
	Replicas int
	MaxAge   time.Duration
	MaxBytes int64

	// NodeTTL is the life of this host's entry in the nodes bucket.
	NodeTTL time.Duration
	// UniqueTimeout is how long a fleet-wide run-once key stays taken: the
	// bus's unique timeout (the bucket's TTL, set by the first host).
	UniqueTimeout time.Duration
	// Takeover is how long a bridge may be silent before another worker
	// takes over.
	Takeover time.Duration
	// MaxInflight bounds publishes awaiting an ack.
	MaxInflight int
	// Version is reported in the node's entry.
	Version string
	// Stats, when set, gives the node's lifecycle counters for its entry.
	Stats func() NodeStats
	// Logger logs; zap.NewNop() if nil.
	Logger *zap.Logger
}

// NodeStats are a host's lifecycle counters, as its entry shows them.
type NodeStats struct {
	Workers int    `json:"workers"`
	Starts  uint64 `json:"starts"`
	Reloads uint64 `json:"reloads"`
	Crashes uint64 `json:"crashes"`
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// HostNode is the default node id: the hostname with every character
// other than a letter, digit, '-' or '_' replaced by '_'.
func HostNode() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	h = strings.Map(func(r rune) rune {
		if r < 128 && tokenRE.MatchString(string(r)) {
			return r
		}
		return '_'
	}, h)
	if len(h) > events.MaxNodeLen {
		h = h[:events.MaxNodeLen]
	}
	return h
}

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if len(c.Name) == 0 || len(c.Name) > 32 || !tokenRE.MatchString(c.Name) {
		return fmt.Errorf("invalid fleet name %q: use 1 to 32 letters, digits, '-' or '_'", c.Name)
	}
	if c.Node == "" {
		c.Node = HostNode()
	}
	if len(c.Node) > events.MaxNodeLen || !tokenRE.MatchString(c.Node) {
		return fmt.Errorf("invalid fleet node %q: use 1 to %d letters, digits, '-' or '_'", c.Node, events.MaxNodeLen)
	}
	if len(c.URLs) == 0 {
		c.URLs = []string{DefaultURL}
	}
	for _, u := range c.URLs {
		if !strings.Contains(u, "://") {
			return fmt.Errorf("invalid NATS url %q: want nats://host:port (or tls://, ws://)", u)
		}
	}
	for _, p := range c.Sources {
		if p == "" || len(p) > events.MaxNameLen {
			return fmt.Errorf("invalid fleet source %q: 1 to %d bytes", p, events.MaxNameLen)
		}
	}
	auth := 0
	for _, s := range []string{c.Creds, c.NKey, c.Token, c.User} {
		if s != "" {
			auth++
		}
	}
	if auth > 1 {
		return fmt.Errorf("fleet %s: give at most one of creds, nkey, token or user", c.Name)
	}
	if c.Password != "" && c.User == "" {
		return fmt.Errorf("fleet %s: password without user", c.Name)
	}
	switch {
	case c.Replicas < 0 || c.Replicas > 5:
		return fmt.Errorf("invalid fleet replicas %d: 1 to 5", c.Replicas)
	case c.MaxAge < 0, c.MaxBytes < 0, c.NodeTTL < 0, c.Takeover < 0, c.MaxInflight < 0, c.UniqueTimeout < 0:
		return fmt.Errorf("fleet %s: durations, sizes and counts must not be negative", c.Name)
	case c.NodeTTL > 0 && c.NodeTTL < time.Second:
		return fmt.Errorf("invalid fleet node_ttl %v: at least 1s", c.NodeTTL)
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.NodeTTL == 0 {
		c.NodeTTL = DefaultNodeTTL
	}
	if c.Takeover == 0 {
		c.Takeover = DefaultTakeover
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.UniqueTimeout == 0 {
		c.UniqueTimeout = events.DefaultUniqueTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// Crosses reports whether events of source go to the other hosts.
func (c *Config) Crosses(source string) bool {
	if source == events.Source || strings.HasPrefix(source, events.Source+".") {
		return false
	}
	if len(c.Sources) == 0 {
		return c.Exclude == nil || !c.Exclude(source)
	}
	for _, p := range c.Sources {
		if events.Matches(p, source) {
			return true
		}
	}
	return false
}

// Stream is the name of the fleet's stream.
func (c *Config) Stream() string { return "IPCBUS_" + c.Name }

// subjects of the stream (the fleet's events only: a message on another
// subject stored in it would leave a gap in the sequence the hosts read,
// which they could not tell from events the stream dropped), and of this
// node's events.
func (c *Config) streamSubjects() string { return c.eventsFilter() }
func (c *Config) eventsFilter() string   { return "ipcbus." + c.Name + ".e.>" }
func (c *Config) eventSubject() string   { return c.eventsPrefix() + c.Node }
func (c *Config) eventsPrefix() string   { return "ipcbus." + c.Name + ".e." }

// Buckets of the fleet.
func (c *Config) nodesBucket() string  { return "ipcbus_" + c.Name + "_nodes" }
func (c *Config) uniqueBucket() string { return "ipcbus_" + c.Name + "_unique" }
