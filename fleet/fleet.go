package fleet

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Fleet is one process's part in a fleet: its NATS connection, the
// fleet-wide run-once claim for its bus, and a candidacy for the host's
// bridge, which it runs while it holds the zone's bridge lease.
type Fleet struct {
	cfg   Config
	z     *zone.Zone
	bus   *events.Bus
	fa    *zone.FleetArea
	log   *zap.Logger
	nc    *nats.Conn
	js    jetstream.JetStream
	token uint64
	pid   int

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	kvMu     sync.Mutex
	uniqueKV jetstream.KeyValue
	nodesKV  jetstream.KeyValue

	bridging   atomic.Bool
	tooLarge   atomic.Uint64
	malformed  atomic.Uint64
	wideWarned atomic.Bool   // the stream's subjects are wider than the events': warned once
	skipped    atomic.Uint64 // remote events of sources this host does not take
	claimsLost atomic.Uint64 // unique claims refused for want of NATS
	lostUpTo   uint64        // the outbound side counted ring losses up to here (its goroutine only)
	outRuns    atomic.Uint64 // outbound runs of this process, in message ids
	outOfOrder atomic.Uint64 // remote copies dropped: their predecessor was not applied yet
}

// errNotOwner ends a bridge whose lease was taken over.
var errNotOwner = errors.New("bridge lease taken over by another worker")

// New joins bus (on zone z) to the fleet cfg describes. It connects to
// NATS in the background (a post never waits on NATS) and does nothing
// else until Start.
func New(cfg Config, z *zone.Zone, bus *events.Bus) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, z: z, bus: bus, fa: z.Fleet(), log: cfg.Logger, pid: os.Getpid(), stop: make(chan struct{}), done: make(chan struct{})}
	for f.token == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		f.token = binary.LittleEndian.Uint64(b[:])
	}
	f.initArea()
	opts := []nats.Option{
		nats.Name(fmt.Sprintf("caddy-ipcbus %s/%s pid %d", cfg.Name, cfg.Node, f.pid)),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(2 * time.Second),
		// No buffering while reconnecting: a publish then fails at once, and
		// the outbound side publishes again from its first unacknowledged
		// event, so that nothing is stored out of ring order.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				f.log.Warn("fleet: disconnected from NATS", zap.String("fleet", cfg.Name), zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			f.log.Info("fleet: connected to NATS", zap.String("fleet", cfg.Name), zap.String("server", c.ConnectedUrlRedacted()))
		}),
	}
	switch {
	case cfg.Creds != "":
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	case cfg.NKey != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKey)
		if err != nil {
			return nil, fmt.Errorf("fleet %s: nkey: %w", cfg.Name, err)
		}
		opts = append(opts, o)
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.TLS != nil {
		opts = append(opts, nats.Secure(cfg.TLS))
	}
	nc, err := nats.Connect(joinURLs(cfg.URLs), opts...)
	if err != nil {
		return nil, fmt.Errorf("fleet %s: connecting to NATS: %w", cfg.Name, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxInflight), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("fleet %s: %w", cfg.Name, err)
	}
	f.nc, f.js = nc, js
	return f, nil
}

func joinURLs(urls []string) string {
	s := ""
	for i, u := range urls {
		if i > 0 {
			s += ","
		}
		s += u
	}
	return s
}

// initArea starts the zone's fleet state afresh when it belongs to no
// fleet or another one (this fleet's name and node hash): outbound from the
// current end of the ring, inbound from now (the join time, kept in
// InApplied until the first bridge has its place in the stream).
func (f *Fleet) initArea() {
	h := fnv.New64a()
	h.Write([]byte(f.cfg.Name + "\x00" + f.cfg.Node))
	id := h.Sum64() | 1
	for {
		cur := f.fa.Fleet.Load()
		if cur == id {
			return
		}
		if f.fa.Fleet.CompareAndSwap(cur, id) {
			f.fa.OutNext.Store(f.z.Ring().Tail())
			f.fa.StreamEpoch.Store(0)
			f.fa.InApplied.Store(uint64(time.Now().UnixNano()))
			for _, c := range []*atomic.Uint64{&f.fa.Published, &f.fa.OutLost, &f.fa.OutPending, &f.fa.Applied, &f.fa.InLag, &f.fa.InLost, &f.fa.NodesSeen} {
				c.Store(0)
			}
			return
		}
	}
}

// Start installs the fleet-wide run-once claim on the bus and starts the
// candidacy for the bridge.
func (f *Fleet) Start() {
	f.bus.SetClaim(f.claim)
	go f.run()
}

// Close ends this process's part: the bridge, if this process runs it,
// hands the lease back at once. leaving tells that the host's last worker
// stops: its entry is removed so that the other hosts see it leave now.
func (f *Fleet) Close(leaving bool) {
	f.bus.SetClaim(nil)
	f.stopOnce.Do(func() { close(f.stop) })
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		f.log.Error("fleet: bridge did not stop within 10s", zap.String("fleet", f.cfg.Name))
	}
	if leaving && f.nc.IsConnected() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if kv, err := f.nodes(ctx); err == nil {
			_ = kv.Delete(ctx, f.cfg.Node)
		}
		cancel()
	}
	f.nc.Close()
}

// Config is the fleet's validated configuration.
func (f *Fleet) Config() Config { return f.cfg }

// Bridging reports whether this process runs the host's bridge now.
func (f *Fleet) Bridging() bool { return f.bridging.Load() }

// run is the candidacy: every tenth of the takeover time it tries the
// lease, and runs the bridge while it holds it.
func (f *Fleet) run() {
	defer close(f.done)
	poll := f.cfg.Takeover / 8
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if f.acquire() {
			f.bridge()
			f.release()
		}
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
	}
}

// acquire takes the bridge lease when nobody holds it or its holder has
// been silent for longer than the takeover time.
func (f *Fleet) acquire() bool {
	now := time.Now().UnixNano()
	cur := f.fa.Owner.Load()
	if cur != 0 && now-f.fa.Heartbeat.Load() < int64(f.cfg.Takeover) {
		return false
	}
	prev := f.fa.OwnerPID.Load()
	if !f.fa.Owner.CompareAndSwap(cur, f.token) {
		return false
	}
	f.fa.Heartbeat.Store(now)
	f.fa.OwnerPID.Store(uint32(f.pid))
	f.fa.Since.Store(now)
	if cur != 0 {
		f.log.Warn("fleet: took over the bridge from a silent worker", zap.String("fleet", f.cfg.Name), zap.Uint32("previous_pid", prev))
	}
	return true
}

func (f *Fleet) owned() bool { return f.fa.Owner.Load() == f.token }

func (f *Fleet) release() {
	f.bridging.Store(false)
	f.fa.Owner.CompareAndSwap(f.token, 0)
}

// bridge runs the host's bridge until the lease is lost or the fleet closes.
func (f *Fleet) bridge() {
	f.bridging.Store(true)
	f.log.Info("fleet: this worker is the host's bridge", zap.String("fleet", f.cfg.Name), zap.String("node", f.cfg.Node), zap.Int("pid", f.pid))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, part := range []struct {
		name string
		run  func(context.Context) error
	}{{"outbound", f.outbound}, {"inbound", f.inbound}, {"nodes", f.nodeEntries}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.keep(ctx, part.name, part.run)
		}()
	}
	t := time.NewTicker(f.cfg.Takeover / 8)
	for loop := true; loop; {
		select {
		case <-f.stop:
			loop = false
		case <-t.C:
			if !f.owned() {
				f.log.Warn("fleet: bridge lease lost, stepping down", zap.String("fleet", f.cfg.Name))
				loop = false
				break
			}
			f.fa.Heartbeat.Store(time.Now().UnixNano())
		}
	}
	t.Stop()
	cancel()
	wg.Wait()
}

// keep runs part again after each failure (NATS away, the stream being
// moved), with a backoff from 100ms doubling to 5s, until ctx ends.
func (f *Fleet) keep(ctx context.Context, name string, part func(context.Context) error) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := part(ctx)
		if ctx.Err() != nil || errors.Is(err, errNotOwner) {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		f.log.Warn("fleet: bridge part failed, retrying", zap.String("fleet", f.cfg.Name), zap.String("part", name), zap.Duration("in", backoff), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// stream returns the fleet's stream, creating it if it does not exist.
func (f *Fleet) stream(ctx context.Context) (jetstream.Stream, error) {
	s, err := f.js.Stream(ctx, f.cfg.Stream())
	if err == nil {
		if subj := s.CachedInfo().Config.Subjects; !slices.Equal(subj, []string{f.cfg.streamSubjects()}) && f.wideWarned.CompareAndSwap(false, true) {
			f.log.Warn("fleet: the stream takes more than the fleet's events: a message stored on another of its subjects counts as lost on every host; narrow it",
				zap.String("stream", f.cfg.Stream()), zap.Strings("subjects", subj), zap.String("want", f.cfg.streamSubjects()))
		}
	}
	if err == nil || !errors.Is(err, jetstream.ErrStreamNotFound) {
		return s, err
	}
	s, err = f.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        f.cfg.Stream(),
		Description: "caddy-ipcbus fleet " + f.cfg.Name,
		Subjects:    []string{f.cfg.streamSubjects()},
		Storage:     jetstream.FileStorage,
		Replicas:    f.cfg.Replicas,
		MaxAge:      f.cfg.MaxAge,
		MaxBytes:    f.cfg.MaxBytes,
		Duplicates:  2 * time.Minute,
		Discard:     jetstream.DiscardOld,
	})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return f.js.Stream(ctx, f.cfg.Stream())
	}
	return s, err
}

// bucket opens a key-value bucket, creating it if it does not exist.
func (f *Fleet) bucket(ctx context.Context, name string, ttl time.Duration) (jetstream.KeyValue, error) {
	kv, err := f.js.KeyValue(ctx, name)
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = f.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, TTL: ttl, History: 1, Replicas: f.cfg.Replicas, Storage: jetstream.FileStorage})
	if errors.Is(err, jetstream.ErrBucketExists) {
		return f.js.KeyValue(ctx, name)
	}
	return kv, err
}

func (f *Fleet) nodes(ctx context.Context) (jetstream.KeyValue, error) {
	f.kvMu.Lock()
	defer f.kvMu.Unlock()
	if f.nodesKV != nil {
		return f.nodesKV, nil
	}
	kv, err := f.bucket(ctx, f.cfg.nodesBucket(), f.cfg.NodeTTL)
	if err != nil {
		return nil, fmt.Errorf("nodes bucket %s: %w", f.cfg.nodesBucket(), err)
	}
	f.nodesKV = kv
	return kv, nil
}

// post puts one of the fleet's own events on this host's bus.
func (f *Fleet) post(event string, data any) {
	if _, err := f.bus.Post(events.Source, event, data); err != nil {
		f.log.Warn("fleet: could not post an event", zap.String("event", event), zap.Error(err))
	}
}
