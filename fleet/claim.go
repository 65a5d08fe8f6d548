package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// claimTimeout bounds the wait for NATS in a run-once post.
const claimTimeout = 2 * time.Second

// claim takes the run-once key of a fleet source in the fleet's unique
// bucket (create-if-absent; the bucket's TTL is the unique timeout): one
// post in the whole fleet wins, the others get events.ErrDuplicate. With
// NATS away it refuses the post (events.ErrUnavailable) rather than let the
// event run on two hosts.
func (f *Fleet) claim(source, _, key string) error {
	if !f.cfg.Crosses(source) {
		return nil
	}
	if !f.nc.IsConnected() {
		f.claimsLost.Add(1)
		return fmt.Errorf("%w: fleet %s is not connected to NATS", events.ErrUnavailable, f.cfg.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	kv, err := f.unique(ctx)
	if err == nil {
		_, err = kv.Create(ctx, uniqueKey(source, key), []byte(f.cfg.Node))
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrKeyExists):
		return fmt.Errorf("%w (fleet %s)", events.ErrDuplicate, f.cfg.Name)
	default:
		f.claimsLost.Add(1)
		return fmt.Errorf("%w: fleet %s: %v", events.ErrUnavailable, f.cfg.Name, err)
	}
}

// uniqueKey is a bucket key for a source's run-once key: a hash, as keys
// take only a few characters and run-once keys any.
func uniqueKey(source, key string) string {
	h := sha256.Sum256([]byte(source + "\x00" + key))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

func (f *Fleet) unique(ctx context.Context) (jetstream.KeyValue, error) {
	f.kvMu.Lock()
	defer f.kvMu.Unlock()
	if f.uniqueKV != nil {
		return f.uniqueKV, nil
	}
	kv, err := f.bucket(ctx, f.cfg.uniqueBucket(), f.cfg.UniqueTimeout)
	if err != nil {
		return nil, fmt.Errorf("unique bucket %s: %w", f.cfg.uniqueBucket(), err)
	}
	f.uniqueKV = kv
	return kv, nil
}
